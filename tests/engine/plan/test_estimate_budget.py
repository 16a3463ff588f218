"""Estimates you can budget on (issue 17 item 6): the dataset's real token lengths, the CPU
demo against a run measured on this machine, 8B step times against finetty's bench rows, and
one estimate for `finetty estimate`, the wizard's fit line and the review screen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.presets import load_preset
from engine.config.schema import Preset
from engine.data import builtin_data, prepare_dataset
from engine.plan import gpus
from engine.plan.estimate import estimate, estimate_for, format_estimate, make_plan, step_time
from engine.plan.gpus import gpu_spec
from engine.plan.token_lengths import LightTokenizer, measure, padded_width

ROOT = Path(__file__).resolve().parents[3]

# `finetty train smollm2-demo --no-tui` on this project's 2-core CI machine (bench/RESULTS.md,
# "Estimates against measured runs"): the process's peak resident memory and the 60 steps'
# training time on an idle machine.
DEMO_PEAK_RSS_GIB = 1.91
DEMO_TRAINING_S = 83.3  # 60 steps, idle, 2026-12-04 (bench/RESULTS.md)
DEMO_MATMUL_FLOPS = 250e9  # engine.plan.gpus.cpu_matmul_flops on that machine, the same day


@pytest.mark.parametrize(
    ("template", "train_on"),
    [("auto", "responses"), ("llama-3", "all"), ("mistral", "responses"), ("phi-3", "responses")],
)
def test_light_tokenizer_encodes_exactly_like_transformers(
    smol_tokenizer, embedded_dir: Path, template: str, train_on: str
) -> None:
    kwargs = dict(
        path="builtin:finetty-skills",
        split="train",
        fmt="messages",
        chat_template=template,
        train_on=train_on,
        max_length=80,
        packing=False,
        val_size=0,
        seed=0,
        records=builtin_data.records("train"),
    )
    real = prepare_dataset(smol_tokenizer, **kwargs)
    light = prepare_dataset(LightTokenizer(embedded_dir), **kwargs)
    assert light.stats == real.stats
    assert [ex.input_ids for ex in light.train] == [ex.input_ids for ex in real.train]
    assert [ex.labels for ex in light.train] == [ex.labels for ex in real.train]


def test_local_file_lengths_match_the_run(smol_tokenizer, chat_jsonl: Path) -> None:
    p = Preset.model_validate(
        {
            "model": {"name_or_path": "embedded:smollm2-135m-instruct", "max_seq_length": 40},
            "dataset": {"path": str(chat_jsonl), "val_size": 4},
            "training": {"per_device_train_batch_size": 4, "num_train_epochs": 2},
        }
    )
    lengths = measure(p)
    assert lengths is not None and not lengths.sampled
    real = prepare_dataset(
        smol_tokenizer,
        path=str(chat_jsonl),
        split=None,
        fmt="auto",
        chat_template="auto",
        train_on="responses",
        max_length=40,
        packing=False,
        val_size=4,
        seed=0,
    )
    assert lengths.train_lengths == tuple(len(ex) for ex in real.train)
    assert (lengths.truncated, lengths.longest) == (real.stats.truncated, real.stats.max_length)
    e = estimate(p, None, lengths=lengths)
    assert e.total_steps == 2 * 5  # 20 training rows in micro-batches of 4, two epochs
    assert e.seq_len == max(lengths.train_lengths) <= 40 and e.lengths == "measured"


def test_demo_estimate_uses_the_real_lengths_and_says_so() -> None:
    preset, _ = load_preset("smollm2-demo")
    e = estimate_for(preset, None)
    # The built-in rows are 26-57 tokens with SmolLM2's template; the preset allows 256.
    assert e.lengths == "measured" and e.seq_len == 57 and e.max_seq_length == 256
    assert e.mean_tokens is not None and 40 < e.mean_tokens <= 57
    text = format_estimate(e)
    assert "x 57 tokens (longest row; max_seq_length 256)" in text
    assert "token lengths measured on 384 rows" in text


def test_demo_memory_and_eta_within_30_percent_of_a_measured_run(monkeypatch) -> None:
    # The CPU's matmul rate as measured on the machine of the run, so that the test checks the
    # model, whatever machine runs it.
    monkeypatch.setattr(gpus, "cpu_matmul_flops", lambda: DEMO_MATMUL_FLOPS)
    preset, _ = load_preset("smollm2-demo")
    e = estimate_for(preset, None)
    assert 0.7 * DEMO_PEAK_RSS_GIB <= e.memory.total <= 1.3 * DEMO_PEAK_RSS_GIB, e.memory
    assert e.eta_s is not None
    assert 0.7 * DEMO_TRAINING_S <= e.eta_s <= 1.3 * DEMO_TRAINING_S, e.eta_s


def test_the_cpu_rate_is_measured_on_this_machine(monkeypatch) -> None:
    monkeypatch.delenv("FINETTY_CPU_GFLOPS", raising=False)
    rate = gpus.cpu_matmul_flops()
    assert 1e9 < rate < 1e14  # a real measurement: a GFLOP/s to a hundred TFLOP/s
    assert gpus.training_flops(None) == (rate * gpus.CPU_TRAINING_SHARE, gpus.CPU_TRAINING_SHARE)
    monkeypatch.setenv("FINETTY_CPU_GFLOPS", "120")
    assert gpus.cpu_matmul_flops() == 120e9
    monkeypatch.setenv("FINETTY_CPU_GFLOPS", "nan")  # ignored: measured instead
    assert gpus.cpu_matmul_flops() == rate


def test_a_dataset_that_cannot_be_measured_falls_back_to_max_seq_length() -> None:
    preset, _ = load_preset("llama-3.1-8b-qlora-finetome")  # a hub dataset
    e = estimate_for(preset, gpu_spec("h100"))
    assert e.lengths == "max_seq_length" and e.seq_len == 2048
    assert any("dataset not measured here" in note for note in e.notes)
    assert "x 2048 tokens (max_seq_length)" in format_estimate(e)


def test_estimate_with_the_dataset_measured_loads_no_torch() -> None:
    code = (
        "import sys\n"
        "from engine.config.presets import load_preset\n"
        "from engine.plan.estimate import estimate_for\n"
        "e = estimate_for(load_preset('smollm2-demo')[0], None)\n"
        "assert e.lengths == 'measured', e.lengths\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_padded_width_follows_the_trainers_batches() -> None:
    assert padded_width((10, 20, 30, 40), 4, seed=0) == 40
    assert padded_width((5,) * 7 + (50,), 1, seed=0) == pytest.approx((7 * 5 + 50) / 8)
    assert 5 <= padded_width((5,) * 7 + (50,), 2, seed=0) <= 50


# Llama-3.1-8B rows of bench/results.jsonl on the current default path (NVIDIA H200, sequences
# of 2048, gradient checkpointing, adamw_8bit), each with the training keys its variant means.
BENCH_ROWS = [
    # session, mode, micro-batch, variant, training keys
    ("devS-20261201", "qlora", 8, None, {}),
    ("devS-20261201", "lora", 8, None, {}),
    ("devT-20261201", "lora", 8, None, {}),
    ("devT-20261201", "lora", 1, None, {}),
    ("devT-20261201", "lora", 1, "no-cuda-graphs", {"cuda_graphs": False}),
    ("devT-20261201", "qlora", 1, None, {}),
    ("devT-20261201", "qlora", 1, "no-cuda-graphs", {"cuda_graphs": False}),
    ("devT-20261201", "lora", 2, None, {}),
    ("devT-20261201", "lora", 2, "no-cuda-graphs", {"cuda_graphs": False}),
    ("devU-20261201", "qlora", 8, None, {}),
    ("devV-20261201", "qlora", 1, None, {}),
    ("devV-20261201", "qlora", 8, None, {}),
]


def _bench_row(session: str, mode: str, batch: int, variant: str | None) -> dict:
    rows = [json.loads(line) for line in (ROOT / "bench/results.jsonl").read_text().splitlines()]
    found = [
        r
        for r in rows
        if r.get("session") == session
        and r.get("stack") == "finetty"
        and r.get("shape") == "llama8b"
        and r.get("mode") == mode
        and r["batch"] == batch
        and r.get("variant") == variant
        and r.get("gpus", 1) == 1
    ]
    assert len(found) == 1, (session, mode, batch, variant)
    return found[0]


@pytest.mark.parametrize(("session", "mode", "batch", "variant", "training"), BENCH_ROWS)
def test_8b_step_time_within_30_percent_of_the_bench_rows(
    session: str, mode: str, batch: int, variant: str | None, training: dict
) -> None:
    row = _bench_row(session, mode, batch, variant)
    measured = row["batch"] * row["seq"] / row["tokens_per_s"]
    p = Preset.model_validate(
        {
            "model": {"name_or_path": "meta-llama/Llama-3.1-8B", "max_seq_length": row["seq"]},
            "method": mode,
            "training": {
                "per_device_train_batch_size": batch,
                "gradient_checkpointing": True,
                "optim": "adamw_8bit",
                **training,
            },
        }
    )
    predicted, _ = step_time(make_plan(p, gpu_spec("h200"), liger_installed=True))
    assert 0.7 * measured <= predicted <= 1.3 * measured, (predicted, measured)


def test_the_walkthrough_step_on_an_h100_is_near_the_bench_rows() -> None:
    """Issue 17: 6.2 s a step before the probe, where finetty's rows put it near 2.8 s."""
    preset, _ = load_preset("llama-3.1-8b-qlora-finetome")
    e = estimate_for(preset, gpu_spec("h100"))
    measured = 2 * 8 * 2048 / _bench_row("devV-20261201", "qlora", 8, None)["tokens_per_s"]
    assert 0.7 * measured <= e.step_time_s <= 1.3 * measured


def test_wizard_fit_line_review_and_cli_show_one_estimate(tmp_path: Path, monkeypatch) -> None:
    # One CPU rate for this process and the CLI's: each would otherwise measure its own.
    monkeypatch.setenv("FINETTY_CPU_GFLOPS", "250")
    from tui.screens.review import estimate_text
    from tui.screens.wizard_model import fit_line
    from tui.wizard_state import WizardState

    preset_path = ROOT / "presets" / "smollm2-demo.yaml"
    cli = subprocess.run(
        [sys.executable, "-m", "tui.cli", "estimate", str(preset_path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    figures = json.loads(cli.stdout)
    state = WizardState.from_file(preset_path)
    line = fit_line(state)
    assert f"{figures['memory']['total']:.1f} of" in line and "(rows measured)" in line
    text = estimate_text(state.preset())
    plain = subprocess.run(
        [sys.executable, "-m", "tui.cli", "estimate", str(preset_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""},
    ).stdout
    assert text.strip() == plain.strip()


def test_one_parameter_count_for_the_wizard_the_estimate_and_the_log(tiny_model_dir: Path) -> None:
    """Issue 17: the wizard said 4.9M of 134.5M (3.63%), the log 4,884,480 of 139,399,488
    (3.50%). Both now count the model prepared for training, adapters included."""
    from transformers import AutoModelForCausalLM

    from engine.core.units import share
    from engine.models.adapters import LoraSettings, prepare_for_training
    from engine.models.loading import count_parameters
    from engine.plan.shapes import shape_for
    from tui.screens.wizard_method import trainable_summary
    from tui.wizard_state import WizardState

    p = Preset.model_validate(
        {
            "model": {"name_or_path": str(tiny_model_dir), "max_seq_length": 64},
            "method": "lora",
            "lora": {"r": 4, "target_modules": "all-linear"},
        }
    )
    model = prepare_for_training(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        method="lora",
        lora=LoraSettings(**p.lora.model_dump()),
        gradient_checkpointing=False,
    )
    total, trainable = count_parameters(model)
    assert shape_for(str(tiny_model_dir)).trainable_split("lora", 4) == (trainable, total)
    e = estimate(p, None)
    assert (e.params_trainable, e.params_total) == (trainable, total)
    assert f"({share(trainable, total)})" in format_estimate(e)
    state = WizardState.from_file(ROOT / "presets" / "smollm2-demo.yaml")
    demo = shape_for("embedded:smollm2-135m-instruct")
    line = trainable_summary(state, demo)
    assert line.startswith("trainable  4.88M of 139M (3.50%)"), line


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "--"),
        (float("nan"), "--"),
        (-5, "--"),
        (-0.4, "0s"),
        (0, "0s"),
        (59.4, "59s"),
        (161, "2m41s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (47 * 3600 + 61, "47h01m"),
        (49 * 3600, "2d01h"),
        (1e308, ">99999d"),
    ],
)
def test_one_duration_format(seconds: float | None, text: str) -> None:
    """Issue 17: one duration appeared in four formats (02:41, 0:02:41, 2m41s, 161 s)."""
    from engine.core.units import duration

    assert duration(seconds) == text


def test_the_estimate_the_log_and_runs_write_durations_alike(tmp_path: Path, monkeypatch) -> None:
    from engine.core.events import Finished
    from engine.runs.rundir import human_line

    monkeypatch.setattr(gpus, "cpu_matmul_flops", lambda: DEMO_MATMUL_FLOPS)
    preset, _ = load_preset("smollm2-demo")
    assert "ETA 1m2" in format_estimate(estimate_for(preset, None))
    line = human_line(Finished("finished", 60, {}, {}, 161.0))
    assert line == "finished at step 60 in 2m41s"
    run = tmp_path / "smollm2-demo" / "20261204-010101"
    run.mkdir(parents=True)
    (run / "status.json").write_text(
        json.dumps(
            {
                "state": "finished",
                "step": 60,
                "total_steps": 60,
                "started": 1000.0,
                "updated": 1161.0,
            }
        )
    )
    (run / "events.jsonl").write_text(Finished("finished", 60, {}, {}, 161.0).to_json() + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "runs", "--run-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert " 2m41s " in out, out


def test_a_template_the_light_renderer_cannot_read_is_not_measured(
    tiny_model_dir: Path, tmp_path: Path, chat_jsonl: Path
) -> None:
    """No wrong verdict from the estimator's renderer: transformers' own may render it."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text("{{ messages | transformers_only_filter }}")
    p = Preset.model_validate(
        {
            "model": {"name_or_path": str(model), "max_seq_length": 64},
            "dataset": {"path": str(chat_jsonl), "chat_template": "model"},
        }
    )
    assert measure(p) is None
    assert estimate_for(p, None).lengths == "max_seq_length"

"""GRPO end to end on a tiny random Llama: a finished run with its final adapter, TRL's metrics
in every Step and in events.jsonl, a resumed run's losses and metrics equal to an uninterrupted
one's (the sampling RNG is the checkpoint's), and a reward that raises ending the run with its
file and row named, no traceback."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from engine.core.errors import EXIT_OK
from engine.core.events import Failed, RecordingSink, RunStarted, Step
from engine.train.run import Run
from tests.engine.runs.test_run_integrity import StopAtStep

METRICS = {
    "reward",
    "reward_std",
    "rewards/length_penalty/mean",
    "rewards/exact_match/mean",
    "frac_reward_zero_std",
    "completions/mean_length",
    "completions/clipped_ratio",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
}


@pytest.fixture
def prompts_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(8)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture
def make_grpo_preset(tiny_model_dir: Path, prompts_jsonl: Path, tmp_path: Path):
    from engine.config.presets import validate

    def build(rewards: list[dict] | None = None, **training: object):
        return validate(
            {
                "name": "tiny-grpo",
                "task": "grpo",
                "model": {
                    "name_or_path": str(tiny_model_dir),
                    "dtype": "float32",
                    "max_seq_length": 64,
                },
                "dataset": {"path": str(prompts_jsonl)},
                "method": "lora",
                "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
                "grpo": {
                    "num_generations": 4,
                    "max_completion_length": 6,
                    "rewards": rewards
                    or [{"builtin": "length_penalty", "max_tokens": 2}, {"builtin": "exact_match"}],
                },
                "training": {
                    "learning_rate": 5e-3,
                    "per_device_train_batch_size": 2,
                    "gradient_accumulation_steps": 1,
                    "max_steps": 4,
                    "save_steps": 2,
                    "logging_steps": 1,
                    "seed": 0,
                    **training,
                },
            }
        )

    return build


def test_a_grpo_run_trains_to_a_final_adapter_with_trl_metrics(
    make_grpo_preset, tmp_path: Path
) -> None:
    sink = RecordingSink()
    result = Run(make_grpo_preset(), sink, runs_root=tmp_path).execute()
    assert result.status == "finished" and result.exit_code == EXIT_OK, sink.of_type(Failed)
    assert (result.run_dir / "final" / "adapter_config.json").is_file()
    steps = sink.of_type(Step)
    assert [step.step for step in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(step.loss) for step in steps)
    assert all(set(step.metrics) == METRICS for step in steps)
    assert all(-1.0 <= step.metrics["reward"] <= 1.0 for step in steps)
    logged = [
        json.loads(line)
        for line in (result.run_dir / "events.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "step"
    ]
    assert [set(entry["metrics"]) for entry in logged] == [METRICS] * 4
    assert sink.of_type(RunStarted)[0].task.startswith("GRPO")


def test_resume_repeats_the_samples_and_the_losses(make_grpo_preset, tmp_path: Path) -> None:
    preset = make_grpo_preset()
    whole = RecordingSink()
    Run(preset, whole, runs_root=tmp_path / "a").execute()
    stopper = StopAtStep(2)
    first = Run(preset, stopper, runs_root=tmp_path / "b")
    stopper.run = first
    assert first.execute().status == "stopped"
    resumed_sink = RecordingSink()
    resumed = Run(preset, resumed_sink, runs_root=tmp_path / "b", resume_dir=first.run_dir)
    assert resumed.execute().status == "finished"
    ran = [(s.loss, s.metrics) for s in stopper.of_type(Step) + resumed_sink.of_type(Step)]
    assert ran == [(s.loss, s.metrics) for s in whole.of_type(Step)]


def test_a_reward_that_raises_fails_the_run_naming_file_and_row(
    make_grpo_preset, tmp_path: Path
) -> None:
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(
        "def picky(prompts, completions, **kwargs):\n    raise ValueError('no luck')\n"
    )
    sink = RecordingSink()
    preset = make_grpo_preset([{"file": str(rewards), "function": "picky"}])
    result = Run(preset, sink, runs_root=tmp_path / "runs").execute()
    assert result.status == "failed"
    (failed,) = sink.of_type(Failed)
    assert failed.kind == "reward"
    # The first prompt of the shuffled epoch: its dataset row, named.
    assert re.search(
        r"my_rewards\.py\) raised ValueError: no luck on dataset row \d+ ", failed.message
    )
    log = result.run_dir / "log.txt"
    assert not log.exists() or "Traceback" not in log.read_text()


def test_the_cpu_grpo_demo() -> None:
    # GRPO from the embedded model on the built-in skills' prompts, offline, on the CPU, with
    # a built-in exact-match reward (and a length penalty, the untrained model's first signal).
    from engine.config.presets import load_preset

    preset, _ = load_preset("smollm2-grpo-demo")
    assert preset.task == "grpo" and preset.method == "lora" and not preset.quantized
    assert preset.model.name_or_path == "embedded:smollm2-135m-instruct"
    assert preset.dataset.path == "builtin:finetty-skills"
    assert [reward.builtin for reward in preset.grpo.rewards] == ["exact_match", "length_penalty"]
    assert preset.grpo.beta == 0 and preset.training.gradient_accumulation_steps == 1


def test_the_task_factory_refuses_grpo_rather_than_train_sft(make_grpo_preset) -> None:
    """task_for knew only SFT and the preference tasks: asked for a GRPO preset it returned the
    SFT task, which a caller other than the run would have trained without a word."""
    from engine.train.tasks.factory import task_for

    with pytest.raises(ValueError, match="grpo"):
        task_for(make_grpo_preset())

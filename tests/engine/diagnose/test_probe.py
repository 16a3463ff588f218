"""The fit probe on the tiny model: real steps, measured figures against the estimate, nothing
left behind; and `finetty train --probe --json` on the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.core.errors import ConfigError
from engine.diagnose.probe import ProbeResult, format_probe, probe, probe_preset

JSON_KEYS = {
    "measured_peak_gib",
    "predicted_peak_gib",
    "measured_step_s",
    "predicted_step_s",
    "tokens_per_s",
    "eta_s",
    "cost_usd",
    "device",
    "total_steps",
    "steps",
    "fits",
}


def test_probe_runs_real_steps_and_leaves_nothing(make_preset, tmp_path: Path) -> None:
    preset = make_preset(max_steps=-1, num_train_epochs=2)
    lines: list[str] = []
    runs = tmp_path / "runs"
    result = probe(preset, 3, runs, hourly_price=2.0, progress=lines.append)

    assert result.device == "cpu" and not result.on_gpu
    assert result.steps == 3 and len(result.step_times_s) == 3
    assert result.peak_kind == "process RSS"
    # The process holds torch and the model: a real RSS, not a lifetime peak of the whole suite.
    assert 0.1 < result.measured_peak_gib < 64
    assert result.predicted_peak_gib > 0
    assert result.measured_step_s > 0 and result.tokens_per_s > 0
    # 20 train rows (24 - 4 val) at micro-batch 4 for 2 epochs: the trainer's own count.
    assert result.total_steps == 10
    assert result.eta_s == pytest.approx(result.measured_step_s * 10, rel=0.01, abs=0.1)
    assert result.cost_usd == round(result.eta_s / 3600 * 2.0, 2)
    assert result.fits
    assert any(line.startswith("step 3/3") for line in lines)
    # No checkpoint, no final adapter, no probe run left under the runs root.
    assert list(runs.iterdir()) == []

    text = format_probe(result)
    assert "Probe of tiny: 3 steps on the CPU" in text
    assert "peak (RSS)" in text and "ETA, 10 steps" in text and "cost at $2/h" in text
    assert max(len(line) for line in text.splitlines()) <= 72


def test_probe_preset_keeps_settings_and_saves_nothing(make_preset) -> None:
    preset = make_preset(per_device_train_batch_size=2, gradient_accumulation_steps=3)
    probed = probe_preset(preset, 4)
    assert probed.name == "tiny-probe"
    assert probed.training.max_steps == 5 and probed.training.save_steps == 0
    assert not probed.training.eval_exact_match and probed.training.eval_steps is None
    assert probed.training.per_device_train_batch_size == 2
    assert probed.training.gradient_accumulation_steps == 3
    assert probed.model == preset.model and probed.lora == preset.lora


def test_probe_refuses_silly_step_counts(make_preset) -> None:
    with pytest.raises(ConfigError):
        probe(make_preset(), 0)


def test_format_probe_on_a_gpu() -> None:
    result = ProbeResult(
        preset="llama",
        device="NVIDIA H100 80GB HBM3",
        on_gpu=True,
        steps=4,
        micro_batch=8,
        grad_accum=2,
        seq_len=2048,
        peak_kind="torch allocated",
        measured_peak_gib=20.5,
        predicted_peak_gib=19.0,
        measured_reserved_gib=21.9,
        capacity_gib=79.6,
        fits=True,
        measured_step_s=1.5,
        predicted_step_s=1.2,
        tokens_per_s=20000,
        predicted_tokens_per_s=25000,
        step_times_s=(3.0, 1.5, 1.5, 1.5),
        total_steps=625,
        eta_s=937.5,
        predicted_eta_s=750.0,
        hourly_price=None,
        cost_usd=None,
        predicted_cost_usd=None,
    )
    text = format_probe(result)
    assert "on NVIDIA H100 80GB HBM3" in text
    assert "peak (allocated)" in text and "+8%" in text and "+25%" in text
    assert "fits in 79.6 GiB of GPU" in text
    assert "cost" not in text
    assert "DOES NOT FIT" in format_probe(replace(result, fits=False))


def test_cli_probe_json(make_preset, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.config.presets import to_yaml
    from tui.cli import main

    preset_file = tmp_path / "tiny.yaml"
    preset_file.write_text(to_yaml(make_preset()), encoding="utf-8")
    runs = tmp_path / "runs"
    code = main(
        [
            "train",
            str(preset_file),
            "--probe",
            "--probe-steps",
            "2",
            "--price",
            "1.5",
            "--json",
            "--run-dir",
            str(runs),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    data = json.loads(out)
    assert data.keys() >= JSON_KEYS
    assert data["steps"] == 2 and data["device"] == "cpu" and data["total_steps"] == 6
    assert data["cost_usd"] is not None and data["hourly_price"] == 1.5
    assert "probe: step 2/2" in err
    assert not runs.exists() or list(runs.iterdir()) == []

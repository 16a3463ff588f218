"""Health alarms and the NaN stop: each warning once, with a remedy; NaN ends the run, checkpoint kept."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.core.events import Alarm, CheckpointSaved, Event, Failed, RecordingSink
from engine.runs import checkpoint
from engine.train.health import HealthMonitor
from engine.train.run import Run


def test_grad_norm_spike_is_flagged_once() -> None:
    health = HealthMonitor()
    for step in range(1, 8):
        assert health.on_step(step, 1.0, 100.0) == []
    alarms = health.on_step(8, 50.0, 100.0)
    assert [a.kind for a in alarms] == ["grad_norm_spike"] and alarms[0].remedy
    assert health.on_step(9, 80.0, 100.0) == []


def test_throughput_collapse_is_flagged() -> None:
    health = HealthMonitor()
    for step in range(1, 8):
        health.on_step(step, 1.0, 1000.0)
    assert [a.kind for a in health.on_step(8, 1.0, 100.0)] == ["throughput_drop"]


def test_rising_eval_loss_is_flagged_after_two_rises() -> None:
    health = HealthMonitor()
    assert health.on_eval(10, 2.0) == [] and health.on_eval(20, 1.5) == []
    assert health.on_eval(30, 1.6) == []
    assert [a.kind for a in health.on_eval(40, 1.7)] == ["eval_loss_rising"]


class PoisonAfter(RecordingSink):
    """Turns the adapter weights into NaN right after a checkpoint, as a diverging run would."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.run = step, None

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, CheckpointSaved) and event.step == self.step and self.run is not None:
            with torch.no_grad():
                for name, param in self.run.model.named_parameters():
                    if "lora_B" in name:
                        param.fill_(float("nan"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    make_preset, tmp_path: Path
) -> None:
    sink = PoisonAfter(3)
    run = Run(make_preset(save_steps=3, max_steps=6), sink, runs_root=tmp_path)
    sink.run = run
    result = run.execute()
    assert result.status == "failed" and result.exit_code == 1
    failed = sink.of_type(Failed)[0]
    assert "nan" in failed.message.lower() and "step 4" in failed.message and failed.hint
    saved = checkpoint.complete_checkpoints(result.run_dir / "checkpoints")
    assert [p.name for p in saved] == ["checkpoint-3"]
    from safetensors.torch import load_file

    weights = load_file(str(saved[0] / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not sink.of_type(Alarm) or all(a.remedy for a in sink.of_type(Alarm))

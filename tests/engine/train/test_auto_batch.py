"""per_device_train_batch_size: auto — out of memory halves the micro-batch and keeps the global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.core.events import LogLine, RecordingSink, Step
from engine.train.run import Run
from engine.train.tasks import sft


def _losses(sink: RecordingSink) -> list[float]:
    return [event.loss for event in sink.of_type(Step)]


def test_oom_halves_micro_batch_and_matches_the_same_global_batch(
    make_preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = RecordingSink()
    preset = make_preset(per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=3)
    Run(preset, reference, runs_root=tmp_path / "ref").execute()

    real = sft.batch_loss_sum

    def small_memory(model, batch, *args, **kwargs):
        if batch["input_ids"].shape[0] > 2:  # a device that fits only two rows at a time
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(sft, "batch_loss_sum", small_memory)
    sink = RecordingSink()
    auto = make_preset(
        per_device_train_batch_size="auto",
        gradient_accumulation_steps=1,
        max_steps=3,
        per_device_eval_batch_size=2,
    )
    result = Run(auto, sink, runs_root=tmp_path / "auto").execute()  # CPU: auto starts at 8
    assert result.status == "finished"
    retries = [e.text for e in sink.of_type(LogLine) if "Out of memory" in e.text]
    assert len(retries) == 2 and "micro-batch 2 x 4" in retries[-1]
    assert _losses(sink) == pytest.approx(_losses(reference), rel=1e-5)


def test_oom_without_auto_fails_with_the_fixes(make_preset, tmp_path: Path, monkeypatch) -> None:
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(sft, "batch_loss_sum", no_memory)
    sink = RecordingSink()
    result = Run(make_preset(), sink, runs_root=tmp_path).execute()
    assert result.status == "failed" and result.exit_code == 1
    failed = next(e for e in sink.events if type(e).__name__ == "Failed")
    assert failed.kind == "out_of_memory" and "micro-batch 4" in failed.message
    for fix in ("per_device_train_batch_size", "gradient_checkpointing", "qlora", "max_seq_length"):
        assert fix in failed.hint

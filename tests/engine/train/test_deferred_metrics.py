"""Reading each step's loss and grad norm one step late (what a GPU run does, so the host never
waits for the GPU between steps) changes no figure and no order of events."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest

from engine.config.derived import TrainSettings
from engine.core.events import RecordingSink
from engine.train.run import Run

FIGURES = ("step", "loss", "grad_norm", "learning_rate", "tokens", "trained_tokens", "epoch")


def _events(make_preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, defer: bool, **changes):
    monkeypatch.setattr(
        "engine.config.derived.TrainSettings", functools.partial(TrainSettings, defer_metrics=defer)
    )
    preset = make_preset(**{"max_steps": 7, "save_steps": 3, "eval_steps": 2, **changes})
    sink = RecordingSink()
    result = Run(preset, sink, runs_root=tmp_path / str(defer)).execute()
    kept = []
    for event in sink.events:
        if event.type == "step":
            kept.append(("step", *(getattr(event, name) for name in FIGURES)))
        elif event.type in ("eval", "checkpoint_saved"):
            kept.append((event.type, event.step))
    return result, kept


def test_deferred_reads_give_the_same_events(make_preset, tmp_path: Path, monkeypatch) -> None:
    _, now = _events(make_preset, tmp_path, monkeypatch, defer=False)
    _, late = _events(make_preset, tmp_path, monkeypatch, defer=True)
    assert [e[1] for e in now if e[0] == "step"] == list(range(1, 8))
    assert late == now


def test_a_non_finite_loss_still_stops_before_the_next_update(
    make_preset, tmp_path: Path, monkeypatch
) -> None:
    """The loss of step 4 turns NaN: the run fails naming step 4, and the checkpoint of step 3
    is the newest one, as without deferral."""
    import engine.train.tasks.sft

    real = engine.train.tasks.sft.batch_loss_sum
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * math.nan if calls["n"] == 4 else loss

    monkeypatch.setattr(engine.train.tasks.sft, "batch_loss_sum", poisoned)
    result, events = _events(
        make_preset, tmp_path, monkeypatch, defer=True, eval_steps=None, save_steps=3
    )
    assert result.status == "failed" and "step 4" in result.error.message
    assert [e[1] for e in events if e[0] == "step"] == [1, 2, 3]
    assert [e[1] for e in events if e[0] == "checkpoint_saved"] == [3]

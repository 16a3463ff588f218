"""The engine end to end on a tiny real model: events, run directory, stop, resume."""

from __future__ import annotations

import json
from pathlib import Path

from engine.core.errors import EXIT_OK, EXIT_STOPPED
from engine.core.events import (
    CheckpointSaved,
    DatasetStats,
    Eval,
    Event,
    Finished,
    RecordingSink,
    RunStarted,
    Step,
    event_from_dict,
)
from engine.runs import rundir
from engine.train.run import Run


class StopAtStep(RecordingSink):
    """Asks the run to stop once it has seen a given step, like a user pressing stop."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.run: Run | None = None

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, Step) and event.step == self.step and self.run is not None:
            self.run.control.stop()


def losses(sink: RecordingSink) -> list[float]:
    return [event.loss for event in sink.of_type(Step)]


def test_run_emits_events_in_order_and_writes_run_dir(make_preset, tmp_path: Path) -> None:
    sink = RecordingSink()
    run = Run(make_preset(eval_steps=3), sink, runs_root=tmp_path)
    result = run.execute()
    assert result.status == "finished" and result.exit_code == EXIT_OK
    kinds = [type(event).__name__ for event in sink.events]
    assert (
        kinds.index("DatasetStats")
        < kinds.index("RunStarted")
        < kinds.index("Step")
        < kinds.index("Finished")
    )
    steps = sink.of_type(Step)
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]
    assert all(s.tokens > 0 and s.tokens_per_s > 0 and s.grad_norm is not None for s in steps)
    assert steps[-1].eta_s == 0
    stats = sink.of_type(DatasetStats)[0]
    assert stats.train_rows == 20 and stats.val_rows == 4 and stats.trained_tokens > 0
    started = sink.of_type(RunStarted)[0]
    assert 0 < started.trainable_params < started.total_params
    assert [e.step for e in sink.of_type(Eval)] == [3, 6]
    assert [c.step for c in sink.of_type(CheckpointSaved)] == [3]

    # The run directory replays the same stream for `finetty watch` and friends.
    lines = (result.run_dir / "events.jsonl").read_text().splitlines()
    replayed = [event_from_dict(json.loads(line)) for line in lines]
    assert [type(e).__name__ for e in replayed] == kinds
    assert json.loads(lines[0])["v"] == 1
    status = rundir.read_status(result.run_dir)
    assert status["state"] == "finished" and status["step"] == 6
    assert (result.run_dir / "final" / "adapter_config.json").is_file()
    assert (result.run_dir / "config.yaml").is_file()
    assert "step 6/6" in (result.run_dir / "log.txt").read_text()


def test_stop_checkpoints_and_resume_matches_uninterrupted_run(make_preset, tmp_path: Path) -> None:
    reference = RecordingSink()
    Run(make_preset(), reference, runs_root=tmp_path / "a").execute()

    stopper = StopAtStep(4)
    first = Run(make_preset(), stopper, runs_root=tmp_path / "b")
    stopper.run = first
    stopped = first.execute()
    assert stopped.status == "stopped" and stopped.exit_code == EXIT_STOPPED
    saved = stopper.of_type(CheckpointSaved)
    assert [(c.step, c.reason) for c in saved] == [(3, "periodic"), (4, "stop")]
    assert not (stopped.run_dir / "final").exists()

    resumed_sink = RecordingSink()
    resumed = Run(
        make_preset(), resumed_sink, runs_root=tmp_path / "b", resume_dir=stopped.run_dir
    ).execute()
    assert resumed.status == "finished"
    assert resumed_sink.of_type(RunStarted)[0].resumed_from_step == 4
    # Same data order, RNG (dropout is on) and optimizer state: exactly the same losses on CPU.
    assert losses(stopper) + losses(resumed_sink) == losses(reference)
    assert resumed_sink.of_type(Finished)[0].status == "finished"


def test_resume_skips_incomplete_checkpoint(make_preset, tmp_path: Path) -> None:
    stopper = StopAtStep(4)
    run = Run(make_preset(), stopper, runs_root=tmp_path)
    stopper.run = run
    result = run.execute()
    # A crash mid-save leaves a folder without the COMPLETE marker: it must never be used.
    partial = result.run_dir / "checkpoints" / "checkpoint-5"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"half")
    sink = RecordingSink()
    Run(make_preset(), sink, runs_root=tmp_path, resume_dir=result.run_dir).execute()
    warnings = [e.text for e in sink.events if getattr(e, "level", "") == "warning"]
    assert any("checkpoint-5" in text for text in warnings)
    assert sink.of_type(RunStarted)[0].resumed_from_step == 4


def test_keeps_only_the_newest_checkpoints(make_preset, tmp_path: Path) -> None:
    result = Run(
        make_preset(save_steps=1, save_total_limit=2), RecordingSink(), runs_root=tmp_path
    ).execute()
    names = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert names == ["checkpoint-4", "checkpoint-5"]


def test_bad_dataset_fails_with_exit_2_and_failed_event(make_preset, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    preset = make_preset()
    preset.dataset.path = str(bad)
    sink = RecordingSink()
    result = Run(preset, sink, runs_root=tmp_path / "runs").execute()
    assert result.status == "failed" and result.exit_code == 2
    failed = next(e for e in sink.events if type(e).__name__ == "Failed")
    assert "bad.jsonl" in failed.message and failed.hint
    # A run that never trained leaves no folder behind for `latest` to land on (issue 17).
    assert not result.run_dir.exists()

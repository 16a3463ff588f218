"""The run's one state machine (engine.runs.runstate) and the bugs it fixed: saving while paused,
resumed runs that watch and status.json showed as their first segment, a failed resume that
wiped the run's figures."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from engine.core.events import (
    CheckpointSaved,
    Failed,
    Finished,
    RecordingSink,
    RunStarted,
    StateChanged,
    Step,
)
from engine.runs import rundir, runstate
from engine.runs.runstate import RunState, TransitionError
from engine.train.run import Run


def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(run_dir: Path) -> dict:
    return rundir.read_status(run_dir)


def step_event(step: int, loss: float = 1.0, total: int = 6) -> Step:
    return Step(step, total, 0.0, loss, 1e-3, 1.0, 1.0, 1.0, 0.1, 10, 10, 1.0, 1.0)


def started(resumed_from: int = 0, total: int = 6, pid: int = 4242) -> RunStarted:
    return RunStarted(
        run_dir="r",
        name="tiny",
        config={},
        model={},
        total_params=1,
        trainable_params=1,
        trainable_percent=100.0,
        total_steps=total,
        num_epochs=1.0,
        global_batch_size=1,
        resumed_from_step=resumed_from,
        pid=pid,
    )


# -- the machine alone -----------------------------------------------------------------------
def test_saving_returns_to_the_state_it_came_from() -> None:
    state = RunState(strict=True)
    for event in (StateChanged("loading"), started(), StateChanged("training"), step_event(1)):
        state.apply(event)
    state.apply(StateChanged("paused"))
    state.apply(StateChanged("saving", "requested"))
    assert state.status_word == "paused" and state.paused
    assert state.commands() == {"resume", "save", "stop", "abort"}
    with pytest.raises(TransitionError, match="saving -> training"):
        state.apply(StateChanged("training"))  # the bug: a save in a pause "resumed" the run


def test_a_step_outside_training_contradicts_the_machine() -> None:
    state = RunState(strict=True)
    for event in (StateChanged("loading"), started(), StateChanged("training"), step_event(1)):
        state.apply(event)
    state.apply(StateChanged("paused"))
    with pytest.raises(TransitionError, match=r"a step \(2\) while paused"):
        state.apply(step_event(2))


def test_recorded_runs_follow_the_machine() -> None:
    """The demo runs recorded for the screenshots (CPU and H200): every event is legal."""
    recordings = sorted((Path(__file__).parents[2] / "data").glob("demo_run*/events.jsonl"))
    assert recordings
    for path in recordings:
        state = RunState.from_events(runstate.read_events(path), strict=True)
        assert (state.state, state.step) == ("finished", state.total_steps)


def test_a_resume_is_a_new_segment_of_the_same_run() -> None:
    state = RunState(strict=True)
    first = [StateChanged("loading"), started(), StateChanged("training"), step_event(1, 2.5)]
    first += [step_event(2, 3.0), step_event(3, 2.8), StateChanged("stopping")]
    first += [StateChanged("saving", "stop"), StateChanged("stopping")]
    first += [Finished("stopped", 3, {}, {}, 10.0)]
    for event in first:
        state.apply(event)
    assert (state.state, state.step, state.best_loss, state.segments) == ("stopped", 3, 2.5, 1)
    for event in (StateChanged("loading", "dataset"), started(3), StateChanged("training")):
        state.apply(event)
    for step in (4, 5, 6):
        state.apply(step_event(step, 1.0))
    state.apply(Finished("finished", 6, {}, {}, 5.0))
    assert (state.state, state.step, state.best_loss) == ("finished", 6, 1.0)
    assert (state.segments, state.resumes, state.elapsed_s) == (2, [3], 15.0)


def test_a_failed_resume_keeps_the_last_true_figures() -> None:
    state = RunState(strict=True)
    events = [StateChanged("loading"), started(), StateChanged("training"), step_event(3, 2.5)]
    events += [CheckpointSaved(3, "c/checkpoint-3", "stop", 0.1)]
    events += [Finished("stopped", 3, {}, {}, 1.0), StateChanged("loading", "dataset")]
    events += [Failed("config", "bad", "broken checkpoint", None, 0)]
    for event in events:
        state.apply(event)
    status = state.to_status()
    assert status["state"] == "failed" and status["error"] == "broken checkpoint"
    assert (status["step"], status["best_loss"]) == (3, 2.5)
    assert status["last_checkpoint"] == "c/checkpoint-3"


def test_a_dead_process_shows_as_died_and_its_resume_starts_a_segment() -> None:
    state = RunState(strict=True)
    for event in (StateChanged("loading"), started(), StateChanged("training"), step_event(2)):
        state.apply(event)
    assert state.shown(alive=False) == "died"
    state.apply(StateChanged("loading"))  # a resume after a SIGKILL: no final event came
    assert (state.segments, state.step) == (2, 2)


# -- the engine ------------------------------------------------------------------------------
def test_saving_while_paused_stays_paused(make_preset, tmp_path: Path) -> None:
    """Issue 17: p, then s, left the loop paused while every view said it trained."""
    sink = RecordingSink()
    run = Run(make_preset(max_steps=6, save_steps=0), sink, runs_root=tmp_path)
    run.control.pause()  # applied before the first step
    run.start()
    try:
        wait_until(lambda: status_of(run.run_dir).get("state") == "paused", what="paused")
        run.control.save()  # at step 0 there is nothing to save: resume one step, pause again
        run.control.resume()
        wait_until(lambda: sink.of_type(Step), what="a step")
        run.control.pause()
        wait_until(lambda: status_of(run.run_dir).get("phase") == "paused", what="paused again")
        run.control.save()
        wait_until(lambda: sink.of_type(CheckpointSaved), what="the requested checkpoint")
        time.sleep(0.5)
        steps = [event.step for event in sink.of_type(Step)]
        status = status_of(run.run_dir)
        assert (status["state"], status["phase"]) == ("paused", "paused")
        time.sleep(0.5)
        assert [event.step for event in sink.of_type(Step)] == steps  # really paused
        events = runstate.read_events(run.run_dir / "events.jsonl")
        RunState.from_events(events, strict=True)  # every transition is one the machine allows
        run.control.resume()
        result = run.join(timeout=60)
    finally:
        run.control.abort()
        run.join(timeout=30)
    assert result is not None and result.status == "finished"
    assert status_of(run.run_dir)["step"] == 6


def test_a_failed_resume_leaves_status_figures(make_preset, tmp_path: Path) -> None:
    """Issue 18: a resume that fails rewrote `stopped, step 3, best 2.50` to `failed, step 0`."""
    sink = RecordingSink()
    run = Run(make_preset(max_steps=6, save_steps=0), sink, runs_root=tmp_path)
    run.control.pause()
    run.start()
    wait_until(lambda: status_of(run.run_dir).get("state") == "paused", what="paused")
    run.control.resume()
    wait_until(lambda: len(sink.of_type(Step)) >= 2, what="two steps")
    run.control.stop()
    assert run.join(timeout=60) is not None
    before = status_of(run.run_dir)
    assert before["state"] == "stopped" and before["step"] >= 2
    for checkpoint in (run.run_dir / "checkpoints").iterdir():
        (checkpoint / "COMPLETE").unlink()  # nothing left to resume from: the resume fails
    failed = Run(make_preset(), RecordingSink(), resume_dir=run.run_dir).execute()
    assert failed.status == "failed"
    after = status_of(run.run_dir)
    assert after["state"] == "failed" and "checkpoint" in after["error"]
    assert (after["step"], after["best_loss"]) == (before["step"], before["best_loss"])
    assert after["segments"] == 2
    last = json.loads((run.run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "failed" and last["step"] == before["step"]


def test_status_runs_and_home_read_one_state(tmp_path: Path, capsys) -> None:
    """status.json, `finetty runs` and the home screen: the same state, from the machine."""
    from tui.cli import main
    from tui.screens.home import run_state as home_state

    run_dir = tmp_path / "tiny" / "20260101-000000"
    run_dir.mkdir(parents=True)
    sink = rundir.RunDirSink(run_dir)
    for event in (StateChanged("loading"), started(pid=os.getpid()), StateChanged("training")):
        sink.emit(event)
    sink.emit(step_event(2))
    sink.emit(StateChanged("paused"))
    sink.emit(StateChanged("saving", "requested"))
    sink.close()
    status = status_of(run_dir)
    assert (status["state"], status["phase"]) == ("paused", "saving")
    assert main(["runs", "--run-dir", str(tmp_path), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["state"], row["phase"], row["step"]) == ("paused", "saving", 2)
    assert home_state(status) == "paused"
    status["pid"] = 2**22 + 7  # no such process: a live state whose writer is gone
    assert home_state(status) == runstate.shown_state(status) == "died"


def test_an_abort_keeps_the_step_it_reached(make_preset, tmp_path: Path) -> None:
    """An abort's final event says step 0 (the loop never returned its figures); status.json
    said so too, for a run that had trained."""
    sink = RecordingSink()
    run = Run(make_preset(max_steps=1000, save_steps=0), sink, runs_root=tmp_path)
    run.start()
    try:
        wait_until(lambda: len(sink.of_type(Step)) >= 2, what="two steps")
        run.control.abort()
        result = run.join(timeout=60)
    finally:
        run.control.abort()
        run.join(timeout=30)
    assert result is not None and result.status == "stopped"
    status = status_of(run.run_dir)
    assert status["state"] == "stopped" and status["step"] >= 2


def test_status_names_the_writing_process_from_the_first_event(tmp_path: Path) -> None:
    """While a run (or its resume) loads, status.json names this process, so that no view
    takes a loading run for one whose process died."""
    for segment in (1, 2):
        sink = rundir.RunDirSink(tmp_path)
        sink.emit(StateChanged("loading", "dataset"))
        status = status_of(tmp_path)
        assert status["pid"] == os.getpid() and status["segments"] == segment
        assert runstate.shown_state(status) == "starting"
        sink.emit(started(pid=os.getpid()))
        sink.emit(Finished("stopped", 0, {}, {}, 1.0))
        sink.close()

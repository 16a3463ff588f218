"""The run's one state machine. status.json, the dashboard header, `finetty runs` and
`finetty watch` all derive the state of a run from here, by feeding it the run's events.

A run is one or more segments: every process that trains it (the first, then each
`--resume`) appends its events to the same events.jsonl. A segment begins with a ``loading``
state after the previous segment ended (or its process died), and its ``RunStarted`` says from
which step it resumed. Figures (step, best loss, checkpoint) carry over between segments, so a
resume that fails early still shows the last true ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.events import (
    CheckpointSaved,
    Event,
    Failed,
    Finished,
    RunStarted,
    StateChanged,
    Step,
    event_from_dict,
)

STARTING = "starting"  # the process is up, nothing loaded yet
LOADING = "loading"  # dataset, model, tokenizing, resuming from a checkpoint
TRAINING = "training"  # steps advance
EVALUATING = "evaluating"  # eval loss or exact match; steps wait
SAVING = "saving"  # a checkpoint or the final model; returns to the state it came from
PAUSED = "paused"  # the loop waits for resume (or stop/abort)
STOPPING = "stopping"  # a stop was asked: checkpoint, then the run ends
FINISHED = "finished"
STOPPED = "stopped"
FAILED = "failed"
DIED = "died"  # shown, never recorded: a live state whose process is gone

TERMINAL = frozenset({FINISHED, STOPPED, FAILED})
LIVE = frozenset({STARTING, LOADING, TRAINING, EVALUATING, SAVING, PAUSED, STOPPING})

#: Which state may follow which, within one process. ``saving`` is narrower still: it returns to
#: the state it was entered from (see ``RunState.allowed``). A terminal state may be followed by
#: ``loading``: a new segment (a resume).
TRANSITIONS: dict[str, frozenset[str]] = {
    STARTING: frozenset({LOADING, EVALUATING, TRAINING, *TERMINAL}),
    LOADING: frozenset({LOADING, EVALUATING, TRAINING, *TERMINAL}),
    EVALUATING: frozenset({TRAINING, *TERMINAL}),
    TRAINING: frozenset({PAUSED, SAVING, STOPPING, EVALUATING, *TERMINAL}),
    PAUSED: frozenset({TRAINING, SAVING, STOPPING, *TERMINAL}),
    SAVING: frozenset({TRAINING, PAUSED, STOPPING, EVALUATING, *TERMINAL}),
    STOPPING: frozenset({SAVING, *TERMINAL}),
    FINISHED: frozenset({LOADING}),
    STOPPED: frozenset({LOADING}),
    FAILED: frozenset({LOADING}),
}

#: status.json's ``state`` word (DESIGN.md: running/paused/finished/failed/stopped), per state.
STATUS_WORDS = {
    STARTING: "starting",
    LOADING: "starting",
    TRAINING: "running",
    EVALUATING: "running",
    PAUSED: "paused",
    STOPPING: "stopping",
    FINISHED: FINISHED,
    STOPPED: STOPPED,
    FAILED: FAILED,
}


class TransitionError(ValueError):
    """An event moved the run to a state its current state does not allow (strict mode)."""


@dataclass
class RunState:
    """The state of one run, derived from its events (all segments of events.jsonl)."""

    state: str = STARTING
    #: For ``saving``: the state the run returns to when the save is done.
    returns_to: str | None = None
    detail: str = ""
    name: str | None = None
    pid: int | None = None
    step: int = 0
    total_steps: int | None = None
    best_loss: float | None = None
    started: float | None = None
    updated: float | None = None
    elapsed_s: float | None = None
    last_checkpoint: str | None = None
    error: str | None = None
    hint: str | None = None
    kind: str | None = None
    segments: int = 0
    #: The step each later segment resumed from (a marker on the chart for each).
    resumes: list[int] = field(default_factory=list)
    #: Events that contradicted the machine (strict mode raises instead).
    violations: list[str] = field(default_factory=list)
    strict: bool = False

    # -- derived -------------------------------------------------------------------------------
    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def status_word(self) -> str:
        """status.json's coarse word: a save reports the state it returns to."""
        if self.state == SAVING:
            return STATUS_WORDS.get(self.returns_to or TRAINING, "running")
        return STATUS_WORDS[self.state]

    @property
    def paused(self) -> bool:
        """The loop waits for a resume (also while it saves a checkpoint asked for in a pause)."""
        return self.state == PAUSED or (self.state == SAVING and self.returns_to == PAUSED)

    @property
    def advancing(self) -> bool:
        """Steps advance in this state (and only in this one)."""
        return self.state == TRAINING

    def allowed(self) -> frozenset[str]:
        """The states that may follow the current one."""
        if self.state == SAVING and self.returns_to is not None:
            after_final = {EVALUATING} if self.returns_to == TRAINING else set()
            return frozenset({self.returns_to, *after_final, *TERMINAL})
        return TRANSITIONS[self.state]

    def commands(self) -> frozenset[str]:
        """The control commands that do something now (the footer shows only these keys)."""
        if self.terminal:
            return frozenset()
        available = {"abort"}
        if self.state != STOPPING and not (self.state == SAVING and self.returns_to == STOPPING):
            available.add("stop")
            if self.paused:
                available.add("resume")
            else:
                available.add("pause")  # applied at the next step boundary
            if self.step > 0 or self.state in (TRAINING, PAUSED):
                available.add("save")
        return frozenset(available)

    def shown(self, alive: bool | None = None) -> str:
        """The state to show; ``alive``: whether the writing process still runs, if known."""
        if alive is False and not self.terminal:
            return DIED
        return self.state

    # -- events --------------------------------------------------------------------------------
    def apply(self, event: Event) -> bool:
        """Feed one event; True when a status-worthy figure changed."""
        self.updated = event.time
        if isinstance(event, Step):
            if self.state != TRAINING:  # steps advance exactly when the run says it trains
                self._violate(f"a step ({event.step}) while {self.state}")
            self.step = event.step
            self.total_steps = event.total_steps
            self.best_loss = (
                event.loss if self.best_loss is None else min(self.best_loss, event.loss)
            )
            return True
        if isinstance(event, StateChanged):
            self._move(event.state, event.detail)
        elif isinstance(event, RunStarted):
            if self.state in TERMINAL:  # a resume whose loading events were not recorded
                self._move(LOADING, "")
            elif self.segments == 0:
                self._begin_segment()
            if event.resumed_from_step > 0 or self.segments > 1:
                self.resumes.append(event.resumed_from_step)
            self.name, self.total_steps = event.name, event.total_steps
            self.step = event.resumed_from_step
            self.pid = event.pid or self.pid
            if self.started is None:
                self.started = event.time
        elif isinstance(event, Finished):
            self._move(event.status, "")
            # An abort reports step 0 (the loop never returned its figures): keep the last step.
            self.step = event.step or self.step
            self.elapsed_s = (self.elapsed_s or 0.0) + event.elapsed_s  # every segment's time
        elif isinstance(event, Failed):
            self._move(FAILED, "")
            self.error, self.hint, self.kind = event.message, event.hint, event.kind
            self.step = max(self.step, event.step)
        elif isinstance(event, CheckpointSaved):
            self.last_checkpoint = event.path
        else:
            return False
        return True

    def _move(self, new: str, detail: str) -> None:
        if new not in TRANSITIONS:
            self._violate(f"{self.state} -> {new} (unknown state)")
            return
        old = self.state
        new_segment = new == LOADING and old not in (STARTING, LOADING)
        if new not in self.allowed() and not new_segment:
            self._violate(f"{old} -> {new} is not a transition of a run")
        if new_segment or (new == LOADING and self.segments == 0):
            # Loading after a terminal state is a resume; after a live one, the last process
            # died without its final event. Either way a new process now writes the run.
            self._begin_segment()
        if new == SAVING:
            if old != SAVING:
                self.returns_to = old
        else:
            self.returns_to = None
        self.state, self.detail = new, detail

    def _violate(self, what: str) -> None:
        """Events that contradict the machine: followed anyway (they are what the engine
        said), recorded, and an error in strict mode (the tests)."""
        self.violations.append(what)
        if self.strict:
            raise TransitionError(what)

    def _begin_segment(self) -> None:
        self.segments += 1
        self.pid = None  # the new process says who it is (RunStarted, or the writing sink)
        self.error = self.hint = self.kind = None

    # -- status.json -----------------------------------------------------------------------------
    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "state": self.status_word,
            "phase": self.state,
            "pid": self.pid,
            "step": self.step,
            "best_loss": self.best_loss,
            "segments": max(self.segments, 1),
            "resumes": list(self.resumes),
        }
        for key in ("name", "started", "total_steps", "updated", "elapsed_s", "last_checkpoint"):
            value = getattr(self, key)
            if value is not None:
                status[key] = value
        if self.state == FAILED:
            status.update(error=self.error, hint=self.hint, kind=self.kind)
        return status

    @classmethod
    def from_events(cls, events: list[Event], *, strict: bool = False) -> RunState:
        state = cls(strict=strict)
        for event in events:
            state.apply(event)
        return state


#: status.json words of a run whose process should still be alive.
LIVE_WORDS = frozenset(STATUS_WORDS[state] for state in LIVE if state in STATUS_WORDS)


def shown_state(status: dict[str, Any]) -> str:
    """The state word to show for a status.json (`finetty runs`, the home screen): its own, or
    ``died`` for a live one whose process is gone without writing a final state."""
    from engine.runs.rundir import pid_alive  # rundir builds on this module

    state = str(status.get("state") or "unknown")
    pid = status.get("pid")
    alive = isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and pid_alive(pid)
    return DIED if state in LIVE_WORDS and not alive else state


def shown_duration_s(status: dict[str, Any], now: float) -> float | None:
    """How long a run has taken, for `finetty runs` and the home screen alike: its segments'
    own elapsed time once one has ended (model loading included), else from its start to
    ``now`` while it is live, or to its last update; None without a numeric start."""
    elapsed = status.get("elapsed_s")
    if isinstance(elapsed, int | float) and not isinstance(elapsed, bool):
        return float(elapsed)
    started, updated = status.get("started"), status.get("updated")
    if not isinstance(started, int | float) or isinstance(started, bool):
        return None
    end = now if shown_state(status) in LIVE_WORDS else updated
    return (end if isinstance(end, int | float) else started) - started


def read_events(path: Path) -> list[Event]:
    """Every whole, parseable event of an events.jsonl (a torn or foreign line is skipped)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    events = []
    for line in data.split(b"\n"):
        event = parse_event_line(line)
        if event is not None:
            events.append(event)
    return events


def parse_event_line(line: bytes | str) -> Event | None:
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    if not line.strip():
        return None
    try:
        data = json.loads(line)
        return event_from_dict(data) if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def run_state(run_dir: Path) -> RunState:
    """A run's state from its whole event history (what status.json says, recomputed)."""
    return RunState.from_events(read_events(run_dir / "events.jsonl"))

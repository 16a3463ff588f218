"""The wrapper every tracker runs behind: a tracker that raises is closed, reported once as an
Alarm, and never called again, so a full disk or a dead tracker service never stops training."""

from __future__ import annotations

import contextlib
from typing import Protocol

from engine.core.events import Alarm, Event, EventSink, Failed, Finished, Step


class Tracker(Protocol):
    name: str  # the report_to name, for the alarm

    def emit(self, event: Event) -> None: ...

    def close(self, status: str) -> None: ...


class GuardedTracker:
    """An event sink around one tracker. ``report`` receives the alarm: the run's other sinks,
    not the fan-out this sink sits in (whose lock is held while this sink runs)."""

    def __init__(self, tracker: Tracker, report: EventSink) -> None:
        self.tracker: Tracker | None = tracker
        self.name = tracker.name
        self.report = report
        self.step = 0

    def emit(self, event: Event) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        if isinstance(event, Step):
            self.step = event.step
        try:
            tracker.emit(event)
            if isinstance(event, (Finished, Failed)):
                self.tracker = None
                tracker.close("failed" if isinstance(event, Failed) else event.status)
        except Exception as exc:  # noqa: BLE001 - any tracker fault is reported, never raised
            self._disable(tracker, exc)

    def _disable(self, tracker: Tracker, exc: Exception) -> None:
        self.tracker = None
        # The tracker is broken already; a second fault while closing it adds nothing.
        with contextlib.suppress(Exception):
            tracker.close("failed")
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.report.emit(
            Alarm(
                kind="tracker",
                step=self.step,
                message=f"{self.name} stopped logging at step {self.step}: "
                f"{type(exc).__name__}{': ' + detail if detail else ''}",
                remedy="Training goes on and the run's events.jsonl keeps every metric. "
                f"Fix the cause (disk space, permissions, the {self.name} service) for the next "
                "run, or leave it out of training.report_to.",
            )
        )

"""What every tracker shares: the events it logs, each to one method, in the run's order.
Nothing is logged before RunStarted opens the tracker (a run that fails on bad input leaves
no tracker run behind)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from engine.core.events import Eval, Event, Finished, HardwareSample, RunStarted, Step


class EventTracker(ABC):
    name: str  # the report_to name

    def __init__(self) -> None:
        self.step = 0  # the latest step: hardware samples are logged at it
        self.opened = False
        self.hardware_seen = False

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.step = event.resumed_from_step
            self.started(event)
            self.opened = True
        elif not self.opened:
            return
        elif isinstance(event, Step):
            self.step = event.step
            self.logged(event)
        elif isinstance(event, Eval):
            self.evaluated(event)
        elif isinstance(event, HardwareSample):
            first, self.hardware_seen = not self.hardware_seen, True
            self.sampled(event, first=first)
        elif isinstance(event, Finished):
            self.finished(event)

    @abstractmethod
    def started(self, event: RunStarted) -> None:
        """Open the tracker's run with its name, config and facts."""

    @abstractmethod
    def logged(self, event: Step) -> None: ...

    @abstractmethod
    def evaluated(self, event: Eval) -> None: ...

    @abstractmethod
    def sampled(self, event: HardwareSample, *, first: bool) -> None:
        """A hardware sample; ``first``: the run's first, which names the machine's GPUs."""

    @abstractmethod
    def finished(self, event: Finished) -> None:
        """The final metrics (the guard closes the tracker after this)."""

    @abstractmethod
    def close(self, status: str) -> None: ...

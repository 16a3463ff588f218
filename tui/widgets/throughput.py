"""Tokens/s, samples/s and step time, as computed by the engine (the UI never derives them)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from engine.core.events import Step


class ThroughputPanel(Vertical):
    DEFAULT_CSS = """
    ThroughputPanel { height: auto; }
    ThroughputPanel > Static { height: 2; }
    ThroughputPanel > Sparkline { height: 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history: list[float] = []

    def compose(self) -> ComposeResult:
        yield Static("[$text-muted]no steps yet[/]", id="rates")
        yield Sparkline([], id="tps-spark")

    def add_step(self, step: Step) -> None:
        self.history.append(step.tokens_per_s)
        self.history = self.history[-120:]

    def show(self, step: Step | None) -> None:
        if step is None:
            return
        self.query_one("#rates", Static).update(
            f"[b]{step.tokens_per_s:,.0f}[/] tok/s  [b]{step.samples_per_s:,.1f}[/] samples/s\n"
            f"[b]{step.step_time_s:.2f}[/] s/step",
            layout=False,  # two lines, fixed height: no relayout per step
        )
        self.query_one(Sparkline).data = list(self.history)

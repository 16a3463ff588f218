"""Small untruths of the dashboard's widgets at 80x24 (issue 17): a wrapped log line keeps
every character, and the lr sparkline draws the schedule's shape, not a solid bar."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console
from textual.app import App, ComposeResult
from textual.widgets import Sparkline, Static

from engine.core.events import HardwareSample, Progress, StateChanged
from tests.tui.scenes.run_screens import dashboard_scene
from tui.console import ConsoleReporter
from tui.widgets.log_tail import LogTail
from tui.widgets.loss_chart import LossChart

pytestmark = pytest.mark.anyio

TEXT = (
    "Resumed from checkpoint-40 (step 40) in /root/runs/smollm2-demo/20261204-033106/"
    "checkpoints, with the same data order, RNG and optimizer state; then 20 more steps END"
)


class Narrow(App):
    """A log as narrow as the dashboard's panel at 80 columns (75 cells inside it)."""

    CSS = "LogTail { width: 77; height: 8; padding: 0 1; }"

    def compose(self) -> ComposeResult:
        yield LogTail()


async def test_a_wrapped_log_line_keeps_every_character() -> None:
    app = Narrow()
    async with app.run_test(size=(80, 24)) as pilot:
        log = app.query_one(LogTail)
        log.write_line(TEXT, at=0)
        await pilot.pause()
        rows = [
            "".join(segment.text for segment in log.render_line(y)).strip()
            for y in range(log.size.height)
        ]
    shown = "".join(row for row in rows if row)
    assert shown.replace(" ", "").endswith(TEXT.replace(" ", "")), rows


class Chart(App):
    CSS = "LossChart { width: 46; }"  # the dashboard's chart column at 80 columns

    def compose(self) -> ComposeResult:
        yield LossChart()


def demo_lr(step: int) -> float:  # smollm2-demo: 5 warm-up steps, then cosine to 0 at 60
    return 1e-3 * step / 5 if step <= 5 else 5e-4 * (1 + math.cos(math.pi * (step - 5) / 55))


async def test_the_lr_sparkline_follows_the_schedule_as_steps_arrive() -> None:
    app = Chart()
    async with app.run_test(size=(80, 24)) as pilot:
        chart = app.query_one(LossChart)
        for step in range(1, 61):  # the dashboard redraws as steps land, from the first one
            chart.add_step(step, 3.0 - step * 0.03, demo_lr(step))
            chart.redraw()
            if step in (1, 30, 60):
                await pilot.pause()
        spark = app.query_one("#lr-spark", Sparkline)
        bars = "".join(segment.text for segment in spark.render_line(0))
    assert len(set(bars)) >= 5, bars  # warm-up, peak and decay: not one solid bar
    assert bars[-1] == "▁" and "█" in bars[: len(bars) // 3]


def _hardware(at: float) -> HardwareSample:
    return HardwareSample([], 900.0, 100.0, 20.0, time=at)


async def test_the_dashboard_clock_moves_while_the_model_loads() -> None:
    """Before the first step nothing else moves: the hardware samples (every 2 s) do."""
    loading = StateChanged(state="loading", detail="model smollm2-135m-instruct", time=1000.0)
    app = dashboard_scene([loading, _hardware(1002.0), _hardware(1004.0)])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        label = str(app.screen.query_one("#progress-label", Static).render())
        assert "elapsed 4s" in label, label


async def test_the_dashboard_shows_the_evaluations_count_and_eta() -> None:
    events = [
        StateChanged(state="evaluating", detail="exact match before training", time=1000.0),
        Progress(
            task="exact match before training",
            done=12,
            total=42,
            unit="examples",
            elapsed_s=4.0,
            eta_s=10.0,
            time=1004.0,
        ),
    ]
    app = dashboard_scene(events)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        label = str(app.screen.query_one("#progress-label", Static).render())
    assert label == "exact match before training: 12/42 examples, ETA 10s, elapsed 4s"


def test_the_headless_console_prints_the_evaluations_progress_and_the_loading_clock() -> None:
    err = io.StringIO()
    reporter = ConsoleReporter(live=False)
    reporter.err = Console(file=err, width=100)
    start = StateChanged(state="loading", detail="model", time=1000.0)
    for event in (start, _hardware(1003.0)):
        reporter.emit(event)
    view = Console(file=io.StringIO(), width=100)
    view.print(reporter)  # the live view's frame, as rich.live draws it
    assert "step 0/1  ETA --  elapsed 3s" in view.file.getvalue()
    for done, at in ((0, 1003.0), (5, 1004.0), (30, 1006.0), (42, 1008.0)):
        reporter.emit(
            Progress(
                task="exact match before training",
                done=done,
                total=42,
                unit="examples",
                elapsed_s=at - 1003,
                eta_s=None,
                time=at,
            )
        )
    lines = err.getvalue().splitlines()
    progress = [line for line in lines if line.startswith("exact match before training")]
    # every 2 s at most, and the last one
    assert [line.split(":")[1].split()[0] for line in progress] == ["0/42", "30/42", "42/42"]

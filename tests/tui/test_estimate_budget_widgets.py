"""Small untruths of the dashboard's widgets at 80x24 (issue 17): a wrapped log line keeps
every character, and the lr sparkline draws the schedule's shape, not a solid bar."""

from __future__ import annotations

import math

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Sparkline

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

"""The dashboard reacting to scripted real engine events, and its keys sending commands."""

from __future__ import annotations

import pytest
from textual.widgets import Static

from engine.core.events import ExactMatch, Failed, Finished, HardwareSample, StateChanged
from tests.tui.scenes.run_screens import RecordingControl, dashboard_scene
from tests.tui.scenes.synthetic import demo_events, hardware, step
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.error import ErrorScreen
from tui.screens.quit_run import QuitRunScreen
from tui.widgets.loss_chart import LossChart

pytestmark = pytest.mark.anyio


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def test_dashboard_shows_scripted_run() -> None:
    events = [
        *demo_events(steps=60),
        ExactMatch("after", 0.84, 21, 25, {"reverse": [9, 10]}, []),
        Finished("finished", 60, {"final_loss": 0.4}, {"final": "runs/x/final"}, 200.0),
    ]
    app = dashboard_scene(events)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert screen.state == "finished"
        assert "step 60/60" in text_of(app, "#progress-label")
        assert "smollm2-demo" in text_of(app, "#title")
        assert "before 8% (2/25) → after 84% (21/25)" in text_of(app, "#results")
        assert "CPU run" in text_of(app, "#process")
        chart = screen.query_one(LossChart)
        assert len(chart.steps) == 60 and len(chart.eval_steps) == 5
        # Keys that need a live run leave the footer once it has ended.
        assert screen.check_action("pause", ()) is False


async def test_gpu_rows_and_collapsed_samples() -> None:
    events = [*demo_events(steps=3), *(hardware(gpus=2, used=1000.0 * i) for i in range(5))]
    app = dashboard_scene(events)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        gpu0 = text_of(app, "#gpu-0")
        assert "GPU0" in gpu0 and "util 97%" in gpu0 and "64°C" in gpu0
        assert "GPU1" in text_of(app, "#gpu-1")
        assert "CPU run" not in text_of(app, "#process")
        # Gauge events collapse: one drain keeps only the newest hardware sample.
        assert app.screen.query_one("#hardware").sample.gpus[0].memory_used_mib == 4000.0


async def test_failure_opens_error_modal_with_hint_and_log() -> None:
    failed = Failed(
        "oom", "Out of memory", "CUDA ran out.", "Lower the batch size.", 3, "/r/log.txt"
    )
    app = dashboard_scene([*demo_events(steps=3), failed])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ErrorScreen)
        body = " ".join(str(w.render()) for w in app.screen.query(Static))
        for part in ("Out of memory", "CUDA ran out.", "Lower the batch size.", "/r/log.txt"):
            assert part in body
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_pause_save_and_stop_send_commands(wait_for) -> None:
    control = RecordingControl()
    app = dashboard_scene(demo_events(steps=5), control)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("p", "s")
        assert control.calls == ["pause", "save"]
        screen = app.screen
        screen.bridge.emit(StateChanged(state="paused"))
        await wait_for(pilot, lambda: screen.state == "paused")
        await pilot.press("p")
        assert control.calls[-1] == "resume"
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert control.calls[-1] == "resume"
        await pilot.press("x", "y")
        assert control.calls[-1] == "stop"


async def test_quit_asks_then_stops_and_leaves_after_checkpoint(exits, wait_for) -> None:
    control = RecordingControl()
    app = dashboard_scene(demo_events(steps=5), control)
    async with app.run_test(size=(80, 24)) as pilot:
        calls = exits(app)
        await pilot.pause()
        await pilot.press("q")
        assert isinstance(app.screen, QuitRunScreen)
        await pilot.press("escape")
        assert not calls and control.calls == []
        await pilot.press("q", "s")
        assert control.calls == ["stop"] and not calls
        screen = app.screen
        screen.bridge.emit(Finished("stopped", 5, {}, {}, 20.0))
        await wait_for(pilot, lambda: bool(calls))


async def test_quit_without_asking_once_finished(exits) -> None:
    app = dashboard_scene([*demo_events(steps=2), Finished("finished", 2, {}, {}, 5.0)])
    async with app.run_test(size=(80, 24)) as pilot:
        calls = exits(app)
        await pilot.pause()
        await pilot.press("q")
        assert calls


async def test_redraws_are_batched_and_bounded(wait_for) -> None:
    app = dashboard_scene([])
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        drains = []
        original = screen.bridge.drain
        screen.bridge.drain = lambda: drains.append(1) or original()
        for n in range(1, 301):  # a burst much faster than the redraw rate
            screen.bridge.emit(step(n, total=300))
            screen.bridge.emit(hardware())
        await wait_for(pilot, lambda: screen.last_step is not None and screen.last_step.step == 300)
        assert len(drains) <= 3
        assert len(screen.query_one(LossChart).steps) == 300  # steps are never dropped


async def test_smoothing_toggle_and_help() -> None:
    app = dashboard_scene(demo_events(steps=10))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        chart = app.screen.query_one(LossChart)
        await pilot.press("m")
        assert chart.smoothing
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "HelpScreen"


async def test_fits_80x24() -> None:
    app = dashboard_scene(demo_events(steps=10, gpus=1))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for selector in ("#title", "#progress-row", "#loss", "#throughput", "#hardware", "#log"):
            region = app.screen.query_one(selector).region
            assert region.width > 0 and region.height > 0, selector
            assert region.right <= 80 and region.bottom <= 23, selector  # above the footer


def test_bridge_collapses_gauges_and_posts_once() -> None:
    from tui.bridge import UiBridge

    class Target:
        posted = 0

        def post_message(self, message: object) -> bool:
            self.posted += 1
            return True

    bridge, target = UiBridge(), Target()
    bridge.connect(target)  # type: ignore[arg-type]
    for n in range(1, 51):
        bridge.emit(step(n))
        bridge.emit(HardwareSample([], float(n), 0.0, 0.0))
    assert target.posted == 1
    events = bridge.drain()
    assert [e.step for e in events if e.type == "step"] == list(range(1, 51))
    assert [e.process_rss_mib for e in events if e.type == "hardware"] == [50.0]
    bridge.emit(step(51))
    assert target.posted == 2


def test_redraw_interval_follows_the_ui_cpu_budget() -> None:
    """30 ms of UI work per drain at a 1% budget means one drain every 3 s; cheap drains bring
    the interval back down to the base rate, gradually."""
    from tui.bridge import UiBridge

    clock = {"wall": 100.0, "cpu": 5.0}
    bridge = UiBridge(min_interval=0.25, max_interval=3.0, cpu_budget=0.01)
    bridge.clocks = (lambda: clock["wall"], lambda: clock["cpu"])
    bridge.drain()
    assert bridge.min_interval == 0.25
    clock["wall"] += 0.25
    clock["cpu"] += 0.030
    bridge.drain()
    assert bridge.min_interval == pytest.approx(3.0)
    for _ in range(30):
        clock["wall"] += bridge.min_interval
        clock["cpu"] += 0.0005
        bridge.drain()
    assert bridge.min_interval == 0.25
    clock["wall"] += 0.25
    clock["cpu"] += 0.010  # 10 ms a drain: 1 s between drains keeps the UI at 1%
    bridge.drain()
    assert bridge.min_interval == pytest.approx(1.0)

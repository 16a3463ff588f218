"""The dashboard's state comes from engine.runs.runstate: footer keys per state, the three-way quit,
and `finetty watch` following every segment of a resumed run."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.widgets import Static

from engine.core.events import Finished, RecordingSink, StateChanged, Step
from engine.runs import rundir
from engine.train.run import Run
from tests.tui.scenes.run_screens import RecordingControl, dashboard_scene
from tests.tui.scenes.synthetic import demo_events
from tui.screens.dashboard import DashboardScreen
from tui.screens.quit_run import QuitRunScreen
from tui.widgets.loss_chart import LossChart

pytestmark = pytest.mark.anyio


def footer_keys(screen) -> dict[str, str]:
    """The keys the footer shows, with their descriptions."""
    return {key: b.binding.description for key, b in screen.active_bindings.items()}


async def test_footer_shows_only_the_keys_that_work_now(wait_for) -> None:
    app = dashboard_scene(demo_events(steps=5), RecordingControl())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        keys = footer_keys(screen)
        assert keys["p"] == "pause" and {"s", "x"} <= keys.keys()
        screen.bridge.emit(StateChanged(state="paused"))
        await wait_for(pilot, lambda: footer_keys(screen).get("p") == "resume")
        screen.bridge.emit(StateChanged(state="saving", detail="requested"))
        await wait_for(pilot, lambda: screen.state == "saving")
        assert footer_keys(screen)["p"] == "resume"  # a save in a pause returns to the pause
        await pilot.press("p")
        assert screen.control.calls == ["resume"]
        screen.bridge.emit(StateChanged(state="paused"))
        screen.bridge.emit(StateChanged(state="stopping", detail="checkpoint, then stop"))
        await wait_for(pilot, lambda: screen.state == "stopping")
        assert not {"p", "s", "x"} & footer_keys(screen).keys()
        screen.bridge.emit(Finished("stopped", 5, {}, {}, 9.0))
        await wait_for(pilot, lambda: screen.terminal)
        assert not {"p", "s", "x"} & footer_keys(screen).keys()
        assert "q" in footer_keys(screen)


async def test_quit_offers_detach_stop_or_cancel(exits) -> None:
    control = RecordingControl()
    app = dashboard_scene(demo_events(steps=5), control)
    async with app.run_test(size=(80, 24)) as pilot:
        calls = exits(app)
        await pilot.pause()
        await pilot.press("q")
        assert isinstance(app.screen, QuitRunScreen)
        text = " ".join(str(w.render()) for w in app.screen.query(Static))
        assert "training goes on in this process" in text and "checkpoint" in text
        await pilot.press("escape")  # cancel: nothing sent, still here
        assert isinstance(app.screen, DashboardScreen) and not calls and not control.calls
        await pilot.press("q", "d")  # leave it going: no command, the app closes
        assert calls and control.calls == [] and app.detached


async def test_watch_follows_a_resumed_run_to_its_end(make_preset, tmp_path: Path, wait_for):
    """Issue 17: after a stop at step 3 and a resume to 6/6, watch still said stopped 3/6."""
    from tui.app import FinettyApp

    class StopAt3(RecordingSink):
        def emit(self, event) -> None:
            super().emit(event)
            if isinstance(event, Step) and event.step == 3:
                first.control.stop()

    first = Run(make_preset(max_steps=6, save_steps=0), StopAt3(), runs_root=tmp_path)
    assert first.execute().status == "stopped"
    app = FinettyApp(watch_dir=first.run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "stopped", timeout=20)
        # The resume appends a second segment to the same events.jsonl while watch is open.
        gate = threading.Event()

        class Gated(RecordingSink):
            def emit(self, event) -> None:
                super().emit(event)
                if isinstance(event, Step) and event.step == 4:
                    gate.wait(30)  # hold the resumed run at step 4 until watch has seen it

        resumed = Run(make_preset(), Gated(), resume_dir=first.run_dir)
        resumed.start()
        try:
            await wait_for(pilot, lambda: screen.state == "training", timeout=120)
            chart = screen.query_one(LossChart)
            await wait_for(pilot, lambda: chart.resumes == [3], timeout=20)
        finally:
            gate.set()
        result = resumed.join(timeout=120)
        assert result is not None and result.status == "finished"
        await wait_for(pilot, lambda: screen.state == "finished", timeout=20)
        assert screen.last_step is not None and screen.last_step.step == 6
        assert "step 6/6" in str(screen.query_one("#progress-label", Static).render())
        assert chart.steps == [1, 2, 3, 4, 5, 6]
    status = rundir.read_status(first.run_dir)
    assert (status["state"], status["step"], status["segments"]) == ("finished", 6, 2)
    assert status["resumes"] == [3]


async def test_a_resume_in_the_tui_shows_the_whole_run(make_preset, tmp_path: Path, wait_for):
    """`finetty train --resume` with the dashboard: the earlier segment's steps, then a resume
    marker, then the new ones (it showed only the new segment)."""
    from tui.app import FinettyApp

    class StopAt3(RecordingSink):
        def emit(self, event) -> None:
            super().emit(event)
            if isinstance(event, Step) and event.step == 3:
                first.control.stop()

    first = Run(make_preset(max_steps=6, save_steps=0), StopAt3(), runs_root=tmp_path)
    assert first.execute().status == "stopped"
    app = FinettyApp(make_preset(), runs_root=tmp_path, resume_dir=first.run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await wait_for(pilot, lambda: screen.state == "finished", timeout=180)
        chart = screen.query_one(LossChart)
        assert chart.steps == [1, 2, 3, 4, 5, 6] and chart.resumes == [3]
        await pilot.press("q")
    assert app.run_handle is not None and app.run_handle.join(timeout=60).status == "finished"


async def test_chat_under_watch_says_why_it_waits(wait_for) -> None:
    """Issue 17: under `finetty watch`, c on a paused run was refused with "wait until it has
    loaded", which never happens there: the model is in the training process."""
    from tests.tui.scenes.run_screens import SceneApp
    from tui.bridge import UiBridge

    bridge = UiBridge()
    for event in [*demo_events(steps=5), StateChanged(state="paused")]:
        bridge.emit(event)
    control = RecordingControl()
    app = SceneApp(lambda: DashboardScreen(bridge, control=control, watch=True, title="demo"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.state == "paused")
        notes: list[str] = []
        app.screen.notify = lambda message, **_: notes.append(message)
        await pilot.press("c")
        await pilot.pause()
        [note] = notes
        assert "This run is paused" in note and "final model" in note
        assert "wait until it has loaded" not in note

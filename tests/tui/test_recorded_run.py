"""The screenshots' recorded demo run (tests/data/demo_run): a real run, replayed as it was.

Issue 17: the README's pictures were staged scenes (eval lines of ``ppl 2.00`` at losses 1.65,
0.90 and 0.51; chat replies typed into the scene). These tests hold the scenes to the recording.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from textual.widgets import Static

from engine.core.events import CheckpointSaved, ExactMatch, Finished, RunStarted, Step
from engine.data import builtin_data
from tests.tui.scenes.recorded import live_until, recorded_chat, recorded_events
from tests.tui.scenes.run_screens import LIVE_STEP, ask, chat_scene, dashboard_scene, finished_scene
from tui.widgets.chat_log import ChatLog, ChatMessage
from tui.widgets.loss_chart import LossChart

pytestmark = pytest.mark.anyio


def of_type(cls: type) -> list:
    return [event for event in recorded_events() if isinstance(event, cls)]


def test_the_fixture_is_one_whole_demo_run() -> None:
    (started,) = of_type(RunStarted)
    assert started.name == "smollm2-demo" and started.config["name"] == "smollm2-demo"
    steps = of_type(Step)
    assert [s.step for s in steps] == list(range(1, started.total_steps + 1))
    assert all(math.isfinite(s.loss) for s in steps)
    times = [event.time for event in recorded_events()]
    assert times == sorted(times)  # nothing was reordered or spliced in
    (finished,) = of_type(Finished)
    assert finished.status == "finished" and finished.step == started.total_steps
    assert [e.stage for e in of_type(ExactMatch)] == ["before", "after"]


def test_the_recorded_prompts_are_held_out_examples() -> None:
    heldout = {(ex.prompt, ex.answer) for ex in builtin_data.generate("heldout")}
    chat = recorded_chat()
    assert chat.exchanges
    for exchange in chat.exchanges:
        assert (exchange.prompt, exchange.expected) in heldout
        assert exchange.base and exchange.tuned
    assert chat.settings["temperature"] == 0.0  # greedy: the same replies on every re-record


def test_a_prompt_that_was_not_recorded_gets_no_made_up_reply() -> None:
    stream = recorded_chat().reply_stream([{"role": "user", "content": "hello?"}], None, "tuned")
    with pytest.raises(KeyError, match="no recorded reply"):
        next(stream)


def test_live_view_is_a_prefix_of_the_recording() -> None:
    events = live_until(LIVE_STEP)
    assert events == list(recorded_events()[: len(events)])
    steps = [e.step for e in events if isinstance(e, Step)]
    assert steps[-1] == LIVE_STEP
    following = recorded_events()[len(events)]
    assert isinstance(following, (Step, CheckpointSaved))


async def test_dashboard_scene_shows_the_recorded_numbers() -> None:
    steps = {s.step: s for s in of_type(Step)}
    app = dashboard_scene()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        label = str(screen.query_one("#progress-label", Static).render())
        assert f"step {LIVE_STEP}/{len(steps)}" in label
        chart = screen.query_one(LossChart)
        assert chart.steps == list(range(1, LIVE_STEP + 1))
        assert screen.last_step == steps[LIVE_STEP]
        assert screen.state == "training"


async def test_finished_scene_shows_the_recorded_exact_match() -> None:
    before, after = of_type(ExactMatch)
    app = finished_scene()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.screen.state == "finished"
        # The evaluation that ended the run is over: the line reads the steps again.
        label = str(app.screen.query_one("#progress-label", Static).render())
        assert label.startswith("step 60/60"), label
        results = str(app.screen.query_one("#results", Static).render())
        assert f"({before.correct}/{before.total})" in results
        assert f"({after.correct}/{after.total})" in results


async def test_chat_scene_shows_the_recorded_replies() -> None:
    exchange = recorded_chat().exchanges[0]
    app = chat_scene()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await ask(pilot)
        for column, reply in (("tuned", exchange.tuned), ("base", exchange.base)):
            shown = list(app.screen.query_one(f"#{column}", ChatLog).query(ChatMessage))
            assert [m.text for m in shown] == [exchange.prompt, reply], column


async def test_home_scene_lists_the_recorded_run_and_no_checkout_path(monkeypatch) -> None:
    from tests.tui.scenes import wizard
    from tui import wizard_device

    monkeypatch.setattr(wizard_device, "device_spec", wizard_device.device_spec)
    monkeypatch.setenv("FINETTY_PRESETS", "")
    app = wizard.scenes()["home"]()
    async with app.run_test(size=(80, 24)) as pilot:
        await wizard.settle(app)
        await pilot.pause()
        svg = app.export_screenshot()
    (started,) = of_type(RunStarted)
    assert started.name in svg and "finished" in svg and "60/60" in svg
    assert str(Path.cwd()) not in svg  # the snapshot must not depend on where the repo lives

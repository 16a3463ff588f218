"""The app's modes: fast first paint, watch mode on a run directory, launch errors, and a real
tiny run launched from the app end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import Static

from engine.events import Finished
from tui.app import FinettyApp
from tui.screens.dashboard import DashboardScreen
from tui.screens.error import ErrorScreen
from tui.screenshots import demo_events

pytestmark = pytest.mark.anyio


def test_app_import_stays_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import tui.app; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'engine.run') "
        "if m in sys.modules]; print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "[]", out
    assert float(out[-1]) < 1.5


async def test_first_paint_is_fast(tmp_path: Path, make_preset) -> None:
    app = FinettyApp(make_preset(max_steps=1), runs_root=tmp_path)
    started = time.perf_counter()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        painted = time.perf_counter() - started
        assert isinstance(app.screen, DashboardScreen)
        assert painted < 1.0
        app.screen.request_quit()  # nothing attached yet, or a confirmation: either way, leave
        await pilot.pause()
    if app.run_handle is not None:
        app.run_handle.control.abort()
        app.run_handle.join(timeout=60)


async def test_watch_replays_then_tails_and_sends_commands(tmp_path: Path, wait_for) -> None:
    run_dir = tmp_path / "runs" / "demo" / "20261127-120000"
    run_dir.mkdir(parents=True)
    events_file = run_dir / "events.jsonl"
    events_file.write_text("".join(e.to_json() + "\n" for e in demo_events(steps=20)))
    app = FinettyApp(watch_dir=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.last_step is not None and screen.last_step.step == 20)
        assert "watching" in str(screen.query_one("#title", Static).render())
        await pilot.press("p", "s")
        sent = [json.loads(line)["command"] for line in (run_dir / "commands.jsonl").open()]
        assert sent == ["pause", "save"]
        with events_file.open("a") as handle:  # the run goes on elsewhere
            handle.write('{"type": "step", "torn": tru\n')
            handle.write(Finished("finished", 20, {}, {}, 66.0).to_json() + "\n")
        await wait_for(pilot, lambda: screen.state == "finished")
        await pilot.press("q")  # watching never asks: the run is not ours
    assert app.tail is not None and app.tail.ended.is_set()


async def test_launch_error_is_shown_not_swallowed(tmp_path: Path, wait_for) -> None:
    app = FinettyApp(resume_dir=tmp_path / "no-such-run", runs_root=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert app.launch_error is not None and app.launch_error.exit_code == 2


async def test_missing_optional_screen_falls_back(tmp_path: Path) -> None:
    app = FinettyApp(runs_root=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        app._open_optional("tui.screens.not_there", "NoScreen")
        await pilot.pause()
        assert "not available" in str(app.screen.query(Static).last().render())


async def test_real_tiny_run_from_the_app(tmp_path: Path, make_preset, wait_for) -> None:
    app = FinettyApp(make_preset(max_steps=2, save_steps=100), runs_root=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await wait_for(pilot, lambda: screen.terminal, timeout=240)
        assert screen.state == "finished", screen.failure
        assert screen.last_step is not None and screen.last_step.step == 2
        assert screen.control is app.run_handle.control
        await pilot.press("e")
        assert "adapter_config.json" in str(app.screen.query_one("#files", Static).render())
        await pilot.press("escape")
        await pilot.press("q")
    result = app.run_handle.join(timeout=30)
    assert result is not None and result.exit_code == 0
    assert (result.run_dir / "final" / "adapter_config.json").is_file()

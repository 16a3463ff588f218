"""The app's modes: fast first paint, watch mode on a run directory, launch errors, and a real
tiny run launched from the app end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import Checkbox, Static

from engine.core.events import Finished
from tests.tui.scenes.synthetic import demo_events
from tui.app import FinettyApp
from tui.screens.dashboard import DashboardScreen
from tui.screens.error import ErrorScreen

pytestmark = pytest.mark.anyio


def test_app_import_stays_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import tui.app; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'engine.train.run') "
        "if m in sys.modules]; print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "[]", out
    assert float(out[-1]) < 1.5


async def test_first_paint_is_fast(tmp_path: Path, make_preset, monkeypatch) -> None:
    """The dashboard mounts at once; the engine's imports and the model load come after."""
    mounted: list[float] = []
    original = DashboardScreen.on_mount
    monkeypatch.setattr(
        DashboardScreen,
        "on_mount",
        lambda self: (original(self), mounted.append(time.perf_counter())),
    )
    app = FinettyApp(make_preset(max_steps=1), runs_root=tmp_path)
    started = time.perf_counter()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        assert mounted[0] - started < 1.0
        app.screen.request_quit()
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
        assert app.screen.query_one("#fmt-adapter", Checkbox).value  # the run's adapter, ready
        await pilot.press("escape")
        await pilot.press("q")
    result = app.run_handle.join(timeout=30)
    assert result is not None and result.exit_code == 0
    assert (result.run_dir / "final" / "adapter_config.json").is_file()


def test_watch_reports_a_run_whose_process_died(tmp_path: Path) -> None:
    from engine.core.events import RecordingSink
    from tui.bridge import JsonlTail

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / "events.jsonl").write_text(
        "".join(e.to_json() + "\n" for e in demo_events(steps=3))
    )
    status = {"state": "running", "pid": int(dead.stdout), "step": 3}
    (tmp_path / "status.json").write_text(json.dumps(status))
    sink = RecordingSink()
    tail = JsonlTail(tmp_path / "events.jsonl", sink, poll=0.005)  # type: ignore[arg-type]
    tail.start()
    assert tail.ended.wait(10)
    failed = sink.events[-1]
    assert failed.type == "failed" and "--resume" in (failed.hint or "")


async def test_home_opens_a_run_in_watch_mode(tmp_path: Path, wait_for) -> None:
    home = pytest.importorskip("tui.screens.home")
    run_dir = tmp_path / "demo" / "20261127-120000"
    run_dir.mkdir(parents=True)
    events = [*demo_events(steps=4), Finished("finished", 4, {}, {}, 9.0)]
    (run_dir / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in events))
    app = FinettyApp(runs_root=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.post_message(home.HomeScreen.OpenRun(run_dir))
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await wait_for(pilot, lambda: app.screen.state == "finished")
        await pilot.press("q")  # back to home, not out of the app
        await wait_for(pilot, lambda: isinstance(app.screen, home.HomeScreen))


async def test_real_run_quit_stops_with_checkpoint(tmp_path: Path, make_preset, wait_for) -> None:
    app = FinettyApp(make_preset(max_steps=5000, save_steps=10000), runs_root=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.last_step is not None, timeout=240)
        await pilot.press("q", "s")  # leave it going, stop with a checkpoint, or cancel: stop
        await wait_for(pilot, lambda: screen.terminal, timeout=120)
    result = app.run_handle.join(timeout=60)
    assert result is not None and result.status == "stopped" and result.exit_code == 130
    assert list((result.run_dir / "checkpoints").glob("checkpoint-*/COMPLETE"))

"""Launching several processes from the review screen: torchrun in its own session, watched
through the run directory. Two CPU processes on gloo stand in for two GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Select, Static

import tui.launch
from tests.tui.scenes.wizard import settle
from tui.app import FinettyApp
from tui.screens.dashboard import DashboardScreen
from tui.screens.review import ReviewScreen

pytestmark = pytest.mark.anyio


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The review screen offers a GPU count only where NVML sees several GPUs."""
    monkeypatch.setattr(tui.launch, "visible_gpu_count", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


async def test_review_launches_two_processes_and_watches_them(
    two_gpus: None, make_preset, tmp_path: Path, wait_for
) -> None:
    from engine.config.presets import to_yaml

    preset_file = tmp_path / "tiny.yaml"
    preset = make_preset(use_cpu=True, max_steps=4, save_steps=100)
    preset_file.write_text(to_yaml(preset), encoding="utf-8")
    runs = tmp_path / "runs"
    app = FinettyApp(start_screen="review", preset_path=str(preset_file), runs_root=runs)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await settle(app)
        app.screen.query_one("#gpus", Select).value = 2
        await pilot.pause()
        command = str(app.screen.query_one("#review-command", Static).render())
        assert command.endswith("--gpus 2")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        dashboard = app.screen
        assert dashboard.watch  # the TUI watches the job; it does not own it
        await wait_for(pilot, lambda: dashboard.state == "finished", timeout=240)
        title = str(dashboard.query_one("#title", Static).render())
        assert "x2" in title  # two processes trained
        job = app.job
    assert job.wait(timeout=60) == 0
    (run_dir,) = [path for path in runs.glob("*/*") if path.is_dir()]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4
    assert (run_dir / "launcher.log").exists()

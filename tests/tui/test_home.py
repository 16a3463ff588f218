"""The home screen: runs with their real state, presets, and the messages it posts."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable

from tests.tui.scenes.wizard import SceneApp, make_fake_runs
from tui.screens.home import HomeScreen, duration, run_state

pytestmark = pytest.mark.anyio


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FINETTY_PRESETS", str(tmp_path / "no-user-presets"))
    return make_fake_runs(tmp_path)


def test_states_and_durations() -> None:
    assert run_state({"state": "running", "pid": 2**22 + 7}) == "died"
    assert run_state({"state": "finished", "pid": 2**22 + 7}) == "finished"
    assert run_state({}) == "unknown"
    assert duration({"elapsed_s": 7380}) == "2h03m"
    assert duration({"state": "stopped", "started": 10.0, "updated": 95.0}) == "1m25s"


async def test_lists_runs_newest_first_with_state(runs: Path) -> None:
    app = SceneApp(lambda: HomeScreen(runs))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.screen.query_one("#runs", DataTable)
        rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
        assert [row[2] for row in rows] == ["finished", "failed", "died", "stopped"]
        assert rows[0][4] == "0.1832" and rows[0][3] == "60/60"
        presets = app.screen.query_one("#presets", DataTable)
        assert "smollm2-demo" in [str(presets.get_row_at(i)[0]) for i in range(presets.row_count)]


async def test_enter_opens_run_and_preset_and_n_starts_wizard(runs: Path) -> None:
    app = SceneApp(lambda: HomeScreen(runs))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.query_one("#runs", DataTable).focus()
        await pilot.press("down", "enter")
        opened = app.posted[-1]
        assert isinstance(opened, HomeScreen.OpenRun)
        assert opened.run_dir == runs / "qwen2.5-0.5b-lora" / "20261127-093000"

        app.screen.query_one("#presets", DataTable).focus()
        await pilot.press("enter")
        assert isinstance(app.posted[-1], HomeScreen.OpenPreset)
        assert app.posted[-1].path.suffix == ".yaml"
        await pilot.pause()
        assert type(app.screen).__name__ == "ReviewScreen"  # the host wired it like app.py will

        await pilot.press("escape")  # review opened from a preset: back goes to the training step
        await pilot.pause()
        assert type(app.screen).__name__ == "TrainingStep"


async def test_new_run_key(runs: Path) -> None:
    app = SceneApp(lambda: HomeScreen(runs))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.posted[-1], HomeScreen.NewRun)
        assert type(app.screen).__name__ == "ModelStep"


async def test_empty_root_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETTY_PRESETS", str(tmp_path / "none"))
    app = SceneApp(lambda: HomeScreen(tmp_path / "nothing"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.screen.query_one("#no-runs").display
        assert not app.screen.query_one("#runs").display

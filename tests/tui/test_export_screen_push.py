"""The export dialog's "push to hub" at 80×24, against the loopback hub (tests/hub_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Checkbox, Input, Static

from tests.engine.export.test_export import make_run
from tests.hub_server import HubState, loopback_hub
from tests.tui.scenes.run_screens import SceneApp
from tui.screens.export import ExportScreen

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubState]:
    with loopback_hub(monkeypatch, tmp_path) as state:
        yield state


async def fill_and_export(app: SceneApp, pilot, wait_for, out: Path, repo: str) -> str:
    screen = app.screen
    screen.query_one("#out", Input).value = str(out)
    screen.query_one("#push", Input).value = repo
    await pilot.pause()
    screen.query_one("#private", Checkbox).value = True
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: not screen.running, timeout=120)
    return str(screen.query_one("#result", Static).render())


async def test_dialog_pushes_and_shows_the_url(
    tiny_run: Path, tmp_path: Path, hub: HubState, wait_for
) -> None:
    app = SceneApp(lambda: ExportScreen(tiny_run))
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.screen.query_one("#private", Checkbox).disabled  # no repo named: no push
        result = await fill_and_export(app, pilot, wait_for, tmp_path / "out", "alice/d")
        assert f"{hub.url}/alice/d" in result and "pushed" in result
        assert "written and pushed" in str(app.screen.query_one("#status", Static).render())
    stored = hub.files("alice/d")
    adapter = tmp_path / "out" / "adapter"
    assert stored["adapter_config.json"] == (adapter / "adapter_config.json").read_bytes()
    assert hub.repos["alice/d"].private


async def test_dialog_refuses_before_exporting(
    tiny_run: Path, tmp_path: Path, hub: HubState, wait_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    app = SceneApp(lambda: ExportScreen(tiny_run))
    async with app.run_test(size=(80, 24)) as pilot:
        result = await fill_and_export(app, pilot, wait_for, tmp_path / "out", "alice/d")
        assert "Not logged in" in result and "hf auth login" in result
    assert not (tmp_path / "out").exists() and hub.uploads() == []


async def test_a_failed_push_says_to_tick_force(
    tiny_run: Path, tmp_path: Path, hub: HubState, wait_for
) -> None:
    hub.fail_commits = 1
    app = SceneApp(lambda: ExportScreen(tiny_run))
    async with app.run_test(size=(80, 24)) as pilot:
        result = await fill_and_export(app, pilot, wait_for, tmp_path / "out", "alice/f")
        assert "Nothing was committed" in result and "Tick 'force' and export again" in result
    assert set(hub.files("alice/f")) == {".gitattributes"}

"""The review screen: problems as the CLI words them, the command, save as preset, Probe, Launch,
and single-key shortcuts that stay quiet while a field has focus."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, Input, Static

from engine.config.presets import load_preset
from tests.tui.scenes.wizard import SceneApp, settle
from tui.screens.review import ConfirmOverwrite, ReviewScreen
from tui.screens.wizard_flow import step_screen
from tui.wizard_state import WizardState

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def user_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-presets"
    monkeypatch.setenv("FINETTY_PRESETS", str(folder))
    return folder


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def test_probe_and_launch_post_the_validated_preset() -> None:
    state = WizardState.from_file("smollm2-demo")
    app = SceneApp(lambda: step_screen(4, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app)
        assert "smollm2-demo on NVIDIA" in text(app, "#review-estimate") or "the CPU" in text(
            app, "#review-estimate"
        )
        assert text(app, "#review-command") == "finetty train smollm2-demo"
        app.screen.query_one("#probe", Button).focus()
        await pilot.press("p")
        await pilot.press("l")
        probe, launch = app.posted[-2:]
        assert isinstance(probe, ReviewScreen.Probe) and isinstance(launch, ReviewScreen.Launch)
        expected, path = load_preset("smollm2-demo")
        assert launch.preset == expected and probe.preset == expected
        assert launch.path == path


async def test_shortcuts_do_not_fire_while_typing(user_presets: Path) -> None:
    app = SceneApp(lambda: step_screen(4, WizardState.from_file("smollm2-demo")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        name = app.screen.query_one("#field-name Input", Input)
        name.focus()
        name.value = ""
        await pilot.press(*"psl-run")
        await pilot.pause()
        assert name.value == "psl-run"
        assert app.posted == []
        assert not user_presets.exists()


async def test_problems_block_launch_and_read_like_the_cli() -> None:
    state = WizardState.from_file("smollm2-demo")
    state.set_text("training.learning_rate", "abc")
    app = SceneApp(lambda: step_screen(4, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        shown = text(app, "#review-problems")
        assert shown == (
            "✗ preset training.learning_rate: Input should be a valid number, unable to parse "
            "string as a number (got 'abc')"
        )
        assert app.screen.query_one("#next", Button).disabled
        await pilot.press("ctrl+n")
        assert app.posted == []
        assert "--set training.learning_rate=abc" in text(app, "#review-command")


async def test_save_as_preset_asks_before_overwriting(user_presets: Path) -> None:
    state = WizardState()
    state.set_text("name", "mine")
    state.set_text("training.max_steps", "7")
    app = SceneApp(lambda: step_screen(4, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "save as preset first" in text(app, "#review-command")
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = user_presets / "mine.yaml"
        assert load_preset(str(saved))[0].training.max_steps == 7
        assert text(app, "#review-command") == "finetty train mine"

        state.set_text("training.max_steps", "9")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmOverwrite)
        await pilot.press("escape")  # no: the file keeps 7
        await pilot.pause()
        assert load_preset(str(saved))[0].training.max_steps == 7
        await pilot.press("ctrl+s")
        await pilot.pause()
        app.screen.query_one("#overwrite", Button).press()
        await pilot.pause()
        assert load_preset(str(saved))[0].training.max_steps == 9


async def test_saving_under_a_bundled_name_asks(user_presets: Path) -> None:
    app = SceneApp(lambda: step_screen(4, WizardState.from_file("smollm2-demo")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmOverwrite)
        assert not (user_presets / "smollm2-demo.yaml").exists()


async def test_review_names_trust_remote_code_when_on() -> None:
    from pathlib import Path

    from textual.widgets import Static

    from tests.tui.scenes.wizard import SceneApp
    from tui.wizard_state import WizardState

    state = WizardState.from_file(Path("presets/smollm2-demo.yaml"))
    state.set("model.trust_remote_code", True)
    app = SceneApp(lambda: step_screen(4, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = str(app.screen.query_one("#review-problems", Static).render())
        assert "trust_remote_code is on" in text

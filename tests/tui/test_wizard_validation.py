"""One validation for the wizard and the CLI (issue 17 item 8), hardware combinations included:
QLoRA on a box without CUDA is flagged at the wizard's method step and blocks launch, with the
words `finetty train` prints (once, before any run directory exists). A preset name works
wherever a preset path does, `finetty NAME` included."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config.presets import hardware_problems
from engine.config.schema import Preset
from engine.plan.gpus import GPUS
from tests.tui.scenes.wizard import SceneApp, settle
from tui import cli, wizard_device
from tui.cli import terminal as cli_terminal
from tui.screens.review import ReviewScreen
from tui.screens.wizard_flow import step_screen
from tui.widgets.form import FormField
from tui.wizard_state import WizardState

pytestmark = pytest.mark.anyio
CUDA_WORDS = "needs a CUDA GPU"


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wizard's device, as its fit line reads it: none (this CPU box, pinned)."""
    monkeypatch.setattr(wizard_device, "device_spec", lambda: None)


def qlora_state(**kwargs: object) -> WizardState:
    state = WizardState(**kwargs)  # type: ignore[arg-type]
    state.set("method", "qlora")
    state.set("model.load_in_4bit", True)
    return state


def test_the_wizard_words_it_as_the_cli_does() -> None:
    preset = Preset.model_validate({"method": "qlora"})
    wizard = qlora_state(cuda=False).problems()
    assert wizard == hardware_problems(preset, cuda=False, source="preset")
    assert len(wizard) == 1 and wizard[0].startswith("preset method: 4-bit loading")
    assert qlora_state(cuda=True).problems() == []


@pytest.mark.parametrize(("device", "flagged"), [(None, True), (GPUS["l4"], False)])
def test_the_wizard_asks_its_own_device(
    monkeypatch: pytest.MonkeyPatch, device: object, flagged: bool
) -> None:
    monkeypatch.setattr(wizard_device, "device_spec", lambda: device)
    assert ("method" in qlora_state().field_errors()) is flagged


async def test_qlora_without_cuda_is_flagged_at_the_method_step(no_gpu: None) -> None:
    # Before: `✓ valid`, and launching failed after the run directory was made.
    state = WizardState()
    app = SceneApp(lambda: step_screen(2, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.query_one("#field-method", FormField).control.value = "qlora"
        await pilot.pause()
        field = app.screen.query_one("#field-method", FormField)
        assert field.has_class("-invalid")
        assert CUDA_WORDS in state.field_errors()["method"]
        app.screen.action_next()  # the step's own error blocks Next
        await pilot.pause()
        assert type(app.screen).__name__ == "MethodStep"


async def test_qlora_without_cuda_blocks_launch(no_gpu: None) -> None:
    state = qlora_state()
    app = SceneApp(lambda: step_screen(4, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app)
        problems = str(app.screen.query_one("#review-problems").render())
        assert CUDA_WORDS in problems and "ready to launch" not in problems
        app.screen.action_next()
        await pilot.pause()
        assert not [m for m in app.posted if isinstance(m, ReviewScreen.Launch)]


def test_the_cli_refuses_qlora_without_cuda_once_before_a_run_directory(
    make_preset, tmp_path: Path, capsys
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    data = make_preset().model_dump(mode="json")
    data["method"], data["model"]["load_in_4bit"] = "qlora", True
    preset = tmp_path / "q.yaml"
    preset.write_text(yaml.safe_dump(data))
    code = cli.main(["train", str(preset), "--no-tui", "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count(CUDA_WORDS) == 1, err  # before: the failure line, then the same in a panel
    assert not (tmp_path / "runs").exists()  # before: a run directory that never trained


def test_a_preset_name_opens_the_review_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: `finetty smollm2-demo` answered "invalid choice", though the README offers it.
    import tui.app

    calls: list[dict] = []
    monkeypatch.setattr(tui.app, "run_tui", lambda **kwargs: calls.append(kwargs) or 0)
    monkeypatch.setattr(cli_terminal, "interactive", lambda: True)  # as from a terminal
    assert cli.main(["smollm2-demo"]) == 0
    assert calls == [{"runs_root": None, "start_screen": "review", "preset_path": "smollm2-demo"}]


@pytest.mark.parametrize("word", ["train", "runs", "no-such-preset"])
def test_commands_and_unknown_words_are_not_taken_for_presets(word: str) -> None:
    assert not cli.preset_argument(word, cli.build_parser())


def test_a_preset_with_escape_codes_shows_them_escaped_and_flags_the_key(tmp_path: Path) -> None:
    # Before: the review's description field held the raw "\x1b[2J", sent as is to the terminal.
    preset = tmp_path / "evil.yaml"
    preset.write_text(yaml.safe_dump({"name": "evil", "description": "\x1b[2Jhi\x07"}))
    state = WizardState.from_file(preset)
    assert state.text("description") == "\\x1b[2Jhi\\x07"
    assert "control character" in state.field_errors()["description"]

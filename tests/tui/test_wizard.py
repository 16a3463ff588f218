"""The wizard end to end, on a bare host app: Home -> New run -> every step -> Review -> Launch."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Checkbox, Input, Select

from engine.core.errors import ModelLoadError
from tests.tui.scenes.wizard import SceneApp, settle
from tui.screens import wizard_dataset
from tui.screens.home import HomeScreen
from tui.screens.review import ReviewScreen
from tui.screens.wizard_flow import step_screen
from tui.widgets.form import FormField
from tui.wizard_state import WizardState, as_text

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The walk does not need a real tokenizer (test_wizard_dataset loads one)."""

    def refuse(name: str, revision: str | None, trust: bool) -> None:
        raise ModelLoadError("no tokenizer in this test")

    monkeypatch.setattr(wizard_dataset, "tokenizer_loader", refuse)
    monkeypatch.setattr(wizard_dataset, "_TOKENIZERS", {})
    monkeypatch.setenv("FINETTY_PRESETS", str(tmp_path / "user-presets"))


async def type_into(pilot, key: str, text: str) -> None:
    field = pilot.app.screen.query_one(f"#field-{key.replace('.', '-')}", FormField)
    control = field.control
    assert isinstance(control, Input)
    control.focus()
    control.value = ""
    await pilot.press(*text)
    await pilot.pause()


def field_error(app, key: str) -> str:
    field = app.screen.query_one(f"#field-{key.replace('.', '-')}", FormField)
    return (
        str(field.query_one(".field--error").render()).removeprefix("✗ ")
        if field.has_class("-invalid")
        else ""
    )


async def test_walk_from_home_to_launch(tmp_path: Path) -> None:
    app = SceneApp(lambda: HomeScreen(tmp_path / "runs"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        assert type(app.screen).__name__ == "ModelStep"
        await type_into(pilot, "model.name_or_path", "embedded:smollm2-135m-instruct")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert type(app.screen).__name__ == "DatasetStep"
        await type_into(pilot, "model.max_seq_length", "256")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert type(app.screen).__name__ == "MethodStep"
        await type_into(pilot, "lora.r", "8")
        await type_into(pilot, "lora.target_modules", "q_proj, v_proj")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert type(app.screen).__name__ == "TrainingStep"
        await type_into(pilot, "training.learning_rate", "1e-4")
        await type_into(pilot, "training.max_steps", "5")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, ReviewScreen)
        await type_into(pilot, "name", "my-run")
        await pilot.press("ctrl+n")
        await pilot.pause()
        launch = app.posted[-1]
        assert isinstance(launch, ReviewScreen.Launch)
        preset = launch.preset
        assert preset.name == "my-run"
        assert preset.model.max_seq_length == 256
        assert preset.lora.r == 8 and preset.lora.target_modules == ["q_proj", "v_proj"]
        assert preset.training.learning_rate == 1e-4 and preset.training.max_steps == 5
        assert launch.path is None


def cli_message(key: str, value: str) -> str:
    """What `finetty train smollm2-demo --set key=value` says about that key."""
    from engine.config.presets import load_preset
    from engine.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_preset("smollm2-demo", [f"{key}={value}"])
    (problem,) = info.value.problems
    return problem.removeprefix(f"--set {key}: ")


@pytest.mark.parametrize(
    ("step", "key", "text"),
    [
        (3, "training.learning_rate", "abc"),
        (2, "lora.r", "0"),
        (3, "training.per_device_train_batch_size", "0"),
        (0, "model.name_or_path", " "),
    ],
)
async def test_validation_messages_are_the_clis(step: int, key: str, text: str) -> None:
    app = SceneApp(lambda: step_screen(step, WizardState.from_file("smollm2-demo")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await type_into(pilot, key, text)
        assert field_error(app, key) == cli_message(key, text)
        await pilot.press("ctrl+n")  # a step with a bad field does not move on
        await pilot.pause()
        assert step == app.screen.STEP


async def test_unknown_chat_template_message() -> None:
    from engine.core.errors import DatasetError
    from engine.data import resolve_chat_template

    app = SceneApp(lambda: step_screen(1, WizardState()))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await type_into(pilot, "dataset.chat_template", "chatlm")
        with pytest.raises(DatasetError) as info:
            resolve_chat_template(None, "chatlm")
        assert field_error(app, "dataset.chat_template") == info.value.message
        assert "Did you mean 'chatml'?" in info.value.message


async def test_back_and_forward_keep_values_even_invalid_ones() -> None:
    state = WizardState()
    app = SceneApp(lambda: step_screen(2, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await type_into(pilot, "lora.lora_alpha", "32")
        await pilot.press("ctrl+n")
        await pilot.pause()
        await type_into(pilot, "training.learning_rate", "3e-")  # half typed
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert app.screen.query_one("#field-lora-lora_alpha", FormField).control.value == "32"
        await pilot.press("ctrl+n")  # training's error does not block the method step
        await pilot.pause()
        assert type(app.screen).__name__ == "TrainingStep"
        field = app.screen.query_one("#field-training-learning_rate", FormField)
        assert field.control.value == "3e-" and field.has_class("-invalid")


@pytest.mark.parametrize("preset", ["llama-3.1-8b-qlora-finetome", "smollm2-demo"])
async def test_loading_a_preset_fills_every_field(preset: str) -> None:
    state = WizardState.from_file(preset)
    state.cuda = True  # a GPU box: QLoRA presets are valid there (test_wizard_validation.py: CPU)
    for step in range(5):
        app = SceneApp(lambda step=step: step_screen(step, state))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            fields = list(app.screen.query(FormField))
            assert fields
            for field in fields:
                control, want = field.control, state.get(field.key)
                if isinstance(control, Checkbox):
                    assert control.value is bool(want), field.key
                else:
                    assert str(control.value) == as_text(want), field.key
                assert not field.has_class("-invalid"), field.key


async def test_qlora_turns_on_4bit_and_full_hides_lora() -> None:
    state = WizardState(cuda=True)
    app = SceneApp(lambda: step_screen(2, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.query_one("#field-method", FormField).control.value = "qlora"
        await pilot.pause()
        assert state.get("model.load_in_4bit") is True
        assert not state.field_errors()
        app.screen.query_one("#field-method", FormField).control.value = "full"
        await pilot.pause()
        assert state.get("model.load_in_4bit") is False
        assert app.screen.query_one("#field-lora-r").region.width == 0  # hidden, not stale


async def test_select_draws_its_options() -> None:
    app = SceneApp(lambda: step_screen(3, WizardState()))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        select = app.screen.query_one("#field-training-optim", FormField).control
        assert isinstance(select, Select)
        select.focus()
        await pilot.press("enter")
        await pilot.pause()
        from textual.widgets._select import SelectOverlay

        overlay = select.query_one(SelectOverlay)
        assert overlay.region.width > 20 and overlay.region.height >= 3
        lines = [
            "".join(s.text for s in overlay.render_line(y)) for y in range(overlay.size.height)
        ]
        drawn = "\n".join(lines)
        for option in ("adamw_torch", "adamw_8bit", "sgd"):
            assert option in drawn
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.screen.state.get("training.optim") == "adamw_torch_fused"


async def test_nothing_at_zero_width_at_80x24() -> None:
    for step in range(5):
        app = SceneApp(lambda step=step: step_screen(step, WizardState.from_file("smollm2-demo")))
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            body = app.screen.query_one("#wizard-body")
            for field in app.screen.query(FormField):
                field.scroll_visible(animate=False)
                await pilot.pause()
                assert field.size.width >= 60, field.key
                assert field.control.size.width >= 40, field.key
            assert body.size.width >= 76
            for button in app.screen.query("#wizard-nav Button"):
                assert button.region.width > 0 and button.region.right <= 80

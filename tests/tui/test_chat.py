"""The chat screen: streamed deltas, settings, side by side, the gate, and one real tiny model."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from textual.widgets import Input

from tests.tui.scenes.recorded import recorded_chat
from tests.tui.scenes.run_screens import SceneApp, ask, chat_scene
from tui.screens.chat import ChatScreen, GenerationSettings, model_reply_stream
from tui.widgets.chat_log import ChatLog, ChatMessage

pytestmark = pytest.mark.anyio


def messages(app, column: str = "tuned") -> list[ChatMessage]:
    return list(app.screen.query_one(f"#{column}", ChatLog).query(ChatMessage))


async def test_streams_reply_into_both_columns() -> None:
    app = chat_scene()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await ask(pilot)
        tuned, base = messages(app, "tuned"), messages(app, "base")
        assert [m.role for m in tuned] == ["user", "assistant"]
        recorded = recorded_chat().exchanges[0]
        assert tuned[-1].text == recorded.tuned
        assert base[-1].text == recorded.base
        screen = app.screen
        assert screen.history["tuned"][-1] == {"role": "assistant", "content": recorded.tuned}
        assert not screen.busy


async def test_settings_system_prompt_and_typing_never_fires_shortcuts() -> None:
    seen: list[tuple[list[dict[str, str]], GenerationSettings]] = []

    def stream(msgs, settings, variant) -> Iterator[str]:
        seen.append((msgs, settings))
        yield "ok"

    app = SceneApp(lambda: ChatScreen(stream, description="stub"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        screen.query_one("#system", Input).value = "Be brief."
        screen.query_one("#temperature", Input).value = "0.7"
        screen.query_one("#max-tokens", Input).value = "12"
        await pilot.click("#prompt")
        await pilot.press("question_mark", "q", "p", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert type(app.screen) is ChatScreen  # "?" did not open help, "q" did not quit
        msgs, settings = seen[0]
        assert msgs == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "?qp"},
        ]
        assert settings.temperature == 0.7 and settings.max_new_tokens == 12


async def test_bad_settings_are_refused() -> None:
    app = SceneApp(lambda: ChatScreen(lambda *a: iter(["x"]), description="stub"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.query_one("#top-p", Input).value = "1.5"
        await pilot.click("#prompt")
        await pilot.press("h", "enter")
        assert messages(app) == []


async def test_waits_for_the_gate_before_generating(wait_for) -> None:
    gate = threading.Event()
    app = SceneApp(lambda: ChatScreen(lambda *a: iter(["fine"]), description="stub", gate=gate))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.click("#prompt")
        await pilot.press("h", "i", "enter")
        await pilot.pause(0.1)
        assert messages(app)[-1].role == "note"  # "waiting for training to pause…"
        assert app.screen.busy
        gate.set()
        await wait_for(pilot, lambda: not app.screen.busy)
        assert messages(app)[-1].text == "fine"


async def test_errors_show_in_chat_and_compare_needs_adapter() -> None:
    def broken(*args) -> Iterator[str]:
        raise RuntimeError("generation exploded")
        yield ""

    app = SceneApp(lambda: ChatScreen(broken, description="stub", can_compare=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+b")
        assert not app.screen.compare
        await pilot.click("#prompt")
        await pilot.press("h", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "generation exploded" in messages(app)[-1].text
        assert app.screen.history["tuned"] == []


async def test_real_tiny_model_streams_and_compares(tiny_model_dir) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    model.train()
    stream = model_reply_stream(model, tokenizer, None)
    app = SceneApp(lambda: ChatScreen(stream, description="tiny", can_compare=True))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.query_one("#max-tokens", Input).value = "6"
        await ask(pilot, "hi", compare=True)
        for column in ("tuned", "base"):
            reply = messages(app, column)[-1]
            assert reply.role == "assistant", column
            assert app.screen.history[column][-1]["role"] == "assistant"
    assert model.training  # the train/eval mode is restored after answering

"""Chat while the model loads and when leaving mid-reply: messages sent during the load are
queued (they used to be dropped), leaving stops the model at once (it used to wait for the
whole reply), and the load shows its stage and elapsed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tui.scenes.run_screens import SceneApp
from tui.screens.chat import ChatScreen, GenerationSettings
from tui.widgets.chat_log import ChatLog, ChatMessage

pytestmark = pytest.mark.anyio


def transcript(screen: ChatScreen) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in screen.query_one("#tuned", ChatLog).query(ChatMessage)]


async def type_and_send(pilot, text: str) -> None:
    await pilot.click("#prompt")
    for key in text:
        await pilot.press(key if key != " " else "space")
    await pilot.press("enter")


async def test_messages_sent_while_loading_are_queued_and_answered(wait_for) -> None:
    release = threading.Event()
    asked: list[str] = []

    def stream(messages, settings: GenerationSettings, variant: str) -> Iterator[str]:
        asked.append(messages[-1]["content"])
        yield f"echo {messages[-1]['content']}"

    def loader(progress):
        progress("loading the base tiny (1 MiB) on the cpu")
        assert release.wait(30)
        return stream, False

    app = SceneApp(lambda: ChatScreen(loader=loader, description="stub"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await type_and_send(pilot, "one")
        await type_and_send(pilot, "two")
        await pilot.pause()
        assert asked == [] and [t for t, _ in screen.queued] == ["one", "two"]
        await wait_for(pilot, lambda: "loading the base tiny" in str(screen.loading_line.render()))
        release.set()
        await wait_for(pilot, lambda: asked == ["one", "two"] and not screen.busy, timeout=30)
        await pilot.pause()
        assert screen.history["tuned"] == [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "echo one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "echo two"},
        ]
        shown = [t for role, t in transcript(screen) if role in ("user", "assistant")]
        assert shown == ["one", "echo one", "two", "echo two"]  # each question before its answer


async def test_the_load_shows_its_stage_and_a_moving_clock(wait_for) -> None:
    release = threading.Event()

    def loader(progress):
        progress("loading the adapter from final/")
        assert release.wait(30)
        return (lambda *a: iter(["ok"])), False

    app = SceneApp(lambda: ChatScreen(loader=loader, description="stub"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        line = lambda: str(screen.loading_line.render())
        await wait_for(pilot, lambda: line().startswith("loading the adapter from final/… 1s"), 5)
        release.set()
        await wait_for(pilot, lambda: not screen.busy)


async def test_leaving_mid_reply_stops_at_once(wait_for) -> None:
    closed = threading.Event()

    def slow(messages, settings, variant) -> Iterator[str]:
        try:
            for index in range(100):  # ten seconds of reply
                yield f"word{index} "
                time.sleep(0.1)
        finally:
            closed.set()

    app = SceneApp(lambda: ChatScreen(slow, description="stub"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await type_and_send(pilot, "talk")
        await wait_for(pilot, lambda: "word2" in screen.pending.get("tuned", ""))
        left = time.monotonic()
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is not screen, timeout=5)
        assert time.monotonic() - left < 1.5
        assert closed.wait(1)  # the stream was closed, not left running
        assert screen.history["tuned"] == []  # the unanswered question is forgotten


def test_closing_a_real_reply_stream_stops_the_model(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models.generate import stream_reply

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    calls = 0
    forward = model.forward

    def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return forward(*args, **kwargs)

    model.forward = counted
    messages = [{"role": "user", "content": "hi"}]
    # Sampling over the whole vocabulary: an early EOS is as unlikely as any one token.
    stream = stream_reply(model, tokenizer, messages, max_new_tokens=4000, temperature=1.0)
    next(stream)
    stream.close()  # what the chat pane does when the user leaves
    stopped_at = calls
    assert stopped_at < 4000
    time.sleep(0.3)
    assert calls == stopped_at  # nothing runs after close() returned
    assert not any(t.name == "finetty-generate" for t in threading.enumerate())


async def test_leaving_while_waiting_for_training_to_pause_leaves_at_once(wait_for) -> None:
    gate = threading.Event()  # training never pauses in this test
    app = SceneApp(lambda: ChatScreen(lambda *a: iter(["late"]), description="stub", gate=gate))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await type_and_send(pilot, "hi")
        await pilot.pause()
        assert screen.busy
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is not screen, timeout=3)
        assert screen.history["tuned"] == []

"""Chat with the run's model: replies stream in from a worker thread, never blocking the UI.

The screen only knows a ``reply_stream(messages, settings, variant)`` callable that yields text
deltas ("tuned", or "base" for the adapter switched off), so tests can script the deltas. With an
in-memory model that the engine may be using, ``gate`` is set once training has paused.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from tui.messages import ReplyDelta, ReplyDone
from tui.widgets.chat_log import ChatLog, ChatMessage

if TYPE_CHECKING:
    from engine.models.inference import ChatTarget


@dataclass(frozen=True)
class GenerationSettings:
    system: str = ""
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256


ReplyStream = Callable[[list[dict[str, str]], GenerationSettings, str], Iterator[str]]
# Called on a worker thread with a callback that hears each loading stage.
Loader = Callable[[Callable[[str], None]], tuple[ReplyStream, bool]]


def model_reply_stream(model: Any, tokenizer: Any, chat_template: str | None) -> ReplyStream:
    def reply(messages: list[dict[str, str]], s: GenerationSettings, variant: str) -> Iterator[str]:
        from engine.models.generate import stream_reply

        base = model.disable_adapter() if variant == "base" else contextlib.nullcontext()
        was_training = model.training
        model.eval()  # no dropout while answering, even when training is only paused
        try:
            with base:
                yield from stream_reply(
                    model,
                    tokenizer,
                    messages,
                    chat_template=chat_template,
                    max_new_tokens=s.max_new_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                )
        finally:
            model.train(was_training)

    return reply


def chat_loader(target: str | ChatTarget) -> Loader:
    """Loads what `finetty chat TARGET` names; only a PEFT model has a base to compare."""

    def load(progress: Callable[[str], None]) -> tuple[ReplyStream, bool]:
        from engine.models.inference import load_chat_model

        chat = load_chat_model(target, progress=progress)
        stream = model_reply_stream(chat.model, chat.tokenizer, chat.chat_template)
        return stream, hasattr(chat.model, "disable_adapter")

    return load


def run_dir_loader(run_dir: Path) -> Loader:
    return chat_loader(str(run_dir))


class ChatScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("ctrl+b", "compare", "base vs tuned"),
        Binding("ctrl+l", "clear", "clear"),
        Binding("f1", "help", "help"),
    ]

    class Loaded(Message):
        """The loader finished; ``error`` is its message if it failed."""

        def __init__(self, error: str | None) -> None:
            super().__init__()
            self.error = error

    def __init__(
        self,
        reply_stream: ReplyStream | None = None,
        *,
        loader: Loader | None = None,
        description: str = "",
        can_compare: bool = False,
        gate: threading.Event | None = None,
        settings: GenerationSettings | None = None,
    ) -> None:
        super().__init__(id="chat")
        self.initial = settings or GenerationSettings()  # what the settings inputs start with
        self.reply_stream = reply_stream
        self.loader = loader
        self.description = description
        self.can_compare = can_compare
        self.gate = gate
        self.compare = False
        self.history: dict[str, list[dict[str, str]]] = {"tuned": [], "base": []}
        self.pending: dict[str, str] = {}
        self.leave_when_done = False
        # Messages sent while the model loads or a reply streams, sent in order when it is free.
        self.queued: list[tuple[str, GenerationSettings]] = []
        self.cancel = threading.Event()  # set on leaving: the reply stops at the next token
        self.load_stage, self.load_started = "", 0.0
        self.loading_line: ChatMessage | None = None  # the note that shows the load's progress

    def compose(self) -> ComposeResult:
        yield Static(f"[b]chat[/] · {escape(self.description)}", id="chat-title")
        with Horizontal(id="settings"):
            yield Input(self.initial.system, placeholder="(model default)", id="system")
            yield Input(str(self.initial.temperature), type="number", id="temperature")
            yield Input(str(self.initial.top_p), type="number", id="top-p")
            yield Input(str(self.initial.max_new_tokens), type="integer", id="max-tokens")
        with Horizontal(id="columns"):
            yield ChatLog(id="tuned")
            yield ChatLog(id="base")
        yield Input(placeholder="Ask something, enter sends", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        for widget_id, title in (
            ("system", "system prompt"),
            ("temperature", "temp"),
            ("top-p", "top-p"),
            ("max-tokens", "tokens"),
            ("tuned", "fine-tuned"),
            ("base", "base (adapter off)"),
        ):
            self.query_one(f"#{widget_id}").border_title = title
        self.query_one("#base").display = False
        self.query_one("#prompt", Input).focus()
        if self.reply_stream is None and self.loader is not None:
            self.pending = {"load": ""}
            self.load_stage, self.load_started = "loading the model", time.monotonic()
            self.loading_line = self.query_one("#tuned", ChatLog).add("note", "loading the model…")
            self.set_interval(0.5, self.show_loading)
            self.load_model()

    def show_loading(self) -> None:
        """Twice a second while the model loads: its current stage and the time it has taken."""
        if "load" not in self.pending:
            return
        elapsed = time.monotonic() - self.load_started
        queued = f" · {len(self.queued)} message(s) queued" if self.queued else ""
        if self.loading_line is not None:  # clearing the log is refused while it loads
            self.loading_line.replace(f"{self.load_stage}… {elapsed:.0f}s{queued}")

    def _stage(self, text: str) -> None:
        self.load_stage = text
        self.show_loading()

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    @work(thread=True, group="chat-load")
    def load_model(self) -> None:
        assert self.loader is not None  # noqa: S101 - only started with a loader

        def progress(text: str) -> None:
            self.app.call_from_thread(self._stage, text)

        try:
            stream, can_compare = self.loader(progress)
        except Exception as error:  # noqa: BLE001 - shown in the chat, never a crash
            self.app.call_from_thread(self._loaded, None, False, str(error))
            return
        self.app.call_from_thread(self._loaded, stream, can_compare, None)

    def _loaded(self, stream: ReplyStream | None, can_compare: bool, error: str | None) -> None:
        self.pending = {}
        self.reply_stream = stream
        self.can_compare = can_compare
        log = self.query_one("#tuned", ChatLog)
        elapsed = time.monotonic() - self.load_started
        log.add("error" if error else "note", error or f"model ready ({elapsed:.0f}s)")
        self.post_message(self.Loaded(error))
        if self.leave_when_done:  # escape was pressed while the model loaded
            self.dismiss(None)
            return
        if error:
            self.queued.clear()
        self.send_queued()

    # -- asking --------------------------------------------------------------------------------
    def settings(self) -> GenerationSettings | None:
        try:
            settings = GenerationSettings(
                system=self.query_one("#system", Input).value.strip(),
                temperature=float(self.query_one("#temperature", Input).value or 0),
                top_p=float(self.query_one("#top-p", Input).value or 1),
                max_new_tokens=int(self.query_one("#max-tokens", Input).value or 256),
            )
        except ValueError:
            settings = None
        from engine.models.generate import MAX_NEW_TOKENS, MAX_TEMPERATURE, generation_problems

        if settings is None or generation_problems(
            settings.temperature, settings.top_p, settings.max_new_tokens
        ):  # the CLI's flags follow the same rule
            self.notify(
                f"0 ≤ temperature ≤ {MAX_TEMPERATURE:g}, 0 < top-p ≤ 1, "
                f"1 ≤ max new ≤ {MAX_NEW_TOKENS}",
                severity="error",
            )
            return None
        return settings

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "prompt":
            self.query_one("#prompt", Input).focus()
            return
        text = event.value.strip()
        settings = self.settings()
        if not text or settings is None:
            return
        if self.reply_stream is None and not self.busy:
            self.notify("There is no model to answer: see the error above.", severity="error")
            return
        event.input.clear()
        if self.busy:  # the model is loading or answering: this one goes next, in order
            self.queued.append((text, settings))
            # A note, not the message itself: the question is shown where its answer follows.
            self.query_one("#tuned", ChatLog).add("note", f"queued (sent when ready): {text}")
            return
        self.ask(text, settings)

    def send_queued(self) -> None:
        if self.queued and not self.busy and self.reply_stream is not None:
            text, settings = self.queued.pop(0)
            self.ask(text, settings)

    def ask(self, text: str, settings: GenerationSettings) -> None:
        """Show ``text`` in every open column and start the model on it."""
        columns = ["tuned", "base"] if self.compare else ["tuned"]
        conversations = {}
        for column in columns:
            self.history[column].append({"role": "user", "content": text})
            system = [{"role": "system", "content": settings.system}] if settings.system else []
            conversations[column] = system + list(self.history[column])
            self.query_one(f"#{column}", ChatLog).add("user", text)
            self.pending[column] = ""
        if self.gate is not None and not self.gate.is_set():
            self.query_one("#tuned", ChatLog).add("note", "waiting for training to pause…")
        self.generate(conversations, settings)

    @work(thread=True, group="chat-generate")
    def generate(
        self, conversations: dict[str, list[dict[str, str]]], s: GenerationSettings
    ) -> None:
        if self.gate is not None:
            while not self.gate.wait(0.1) and not self.cancel.is_set():
                pass  # training has not paused yet; leaving meanwhile cancels the wait too
        assert self.reply_stream is not None  # noqa: S101 - checked before starting
        for column, messages in conversations.items():
            if self.cancel.is_set():
                self.post_message(ReplyDone(column, cancelled=True))
                continue
            try:
                stream = iter(self.reply_stream(messages, s, column))
                try:
                    for delta in stream:
                        if self.cancel.is_set():
                            break
                        self.post_message(ReplyDelta(column, delta))
                finally:  # closing a generator (on leaving) stops the model at its next token
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
            except Exception as error:  # noqa: BLE001 - a failed reply is shown, not raised
                self.post_message(ReplyDone(column, f"{type(error).__name__}: {error}"))
                continue
            self.post_message(ReplyDone(column, cancelled=self.cancel.is_set()))

    def on_reply_delta(self, message: ReplyDelta) -> None:
        self.pending[message.column] = self.pending.get(message.column, "") + message.text
        self.query_one(f"#{message.column}", ChatLog).stream(message.text)

    def on_reply_done(self, message: ReplyDone) -> None:
        reply = self.pending.pop(message.column, "")
        log = self.query_one(f"#{message.column}", ChatLog)
        if message.error or message.cancelled:
            if message.error:
                log.add("error", message.error)
            self.history[message.column].pop()  # forget the unanswered question
        else:
            self.history[message.column].append({"role": "assistant", "content": reply})
        if not self.busy and self.leave_when_done:
            self.dismiss(None)
        elif not self.busy:
            self.send_queued()

    # -- keys ----------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.queued.clear()  # nobody is left to read their answers
        if "load" in self.pending:  # a load cannot be interrupted; leave as soon as it ends
            self.leave_when_done = True
            self.notify("Leaving once the model has loaded.")
            return
        if self.busy:  # mid-reply: stop the model at its next token, then leave
            self.cancel.set()
            self.leave_when_done = True
            return
        self.dismiss(None)

    def action_compare(self) -> None:
        if not self.can_compare:
            self.notify("No base model to compare: there is no adapter to switch off.")
            return
        self.compare = not self.compare
        self.query_one("#base").display = self.compare
        self.history["base"] = []  # the base model starts its own conversation

    def action_clear(self) -> None:
        if self.busy:
            return
        self.history = {"tuned": [], "base": []}
        for log in self.query(ChatLog):
            log.remove_children()

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen())

"""Textual messages that cross from worker threads to the UI (``post_message`` is thread-safe)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class EventsReady(Message):
    """Engine events are waiting in the bridge; the receiver drains them at its own pace."""

    def can_replace(self, message: Message) -> bool:
        # One pending notice is enough: draining takes everything that arrived meanwhile.
        return isinstance(message, EventsReady)


class RunAttached(Message):
    """The engine was imported and the Run was created and started on its thread."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run


class ReplyDelta(Message):
    """A piece of generated text for one chat column ("tuned" or "base")."""

    def __init__(self, column: str, text: str) -> None:
        super().__init__()
        self.column = column
        self.text = text


class ReplyDone(Message):
    """A reply ended; ``error`` is set when generation failed, ``cancelled`` when it was stopped."""

    def __init__(self, column: str, error: str | None = None, *, cancelled: bool = False) -> None:
        super().__init__()
        self.column = column
        self.error = error
        self.cancelled = cancelled

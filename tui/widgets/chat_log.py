"""A scrolling conversation whose last message grows as deltas stream in."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

ROLE_LABEL = {"user": "you", "assistant": "model", "system": "system", "note": ""}


class ChatMessage(Static):
    DEFAULT_CSS = """
    ChatMessage { height: auto; margin: 0 0 1 0; padding: 0 1; }
    ChatMessage.user { background: $boost; border-left: thick $secondary; }
    ChatMessage.assistant { border-left: thick $primary; }
    ChatMessage.note { color: $text-muted; text-style: italic; }
    ChatMessage.error { color: $error; border-left: thick $error; }
    """

    def __init__(self, role: str, text: str = "") -> None:
        super().__init__(classes=role)
        self.role = role
        self.text = text

    def on_mount(self) -> None:
        self._paint()

    def append(self, delta: str) -> None:
        self.text += delta
        self._paint()

    def replace(self, text: str) -> None:
        """New text for this message (a note that shows a load's stage and clock)."""
        self.text = text
        self._paint()

    def _paint(self) -> None:
        label = ROLE_LABEL.get(self.role, self.role)
        body = Text()
        if label:
            body.append(f"{label}: ", style="bold")
        # Plain Text, never markup: model output may contain brackets.
        body.append(self.text or ("…" if self.role == "assistant" else ""))
        self.update(body)


class ChatLog(VerticalScroll):
    DEFAULT_CSS = """
    ChatLog { height: 1fr; border: round $panel; padding: 0 1; }
    ChatLog:focus { border: heavy $accent; }
    """

    def add(self, role: str, text: str = "") -> ChatMessage:
        message = ChatMessage(role, text)
        self.mount(message)
        self.scroll_end(animate=False)
        return message

    def last(self) -> ChatMessage | None:
        messages = list(self.query(ChatMessage))
        return messages[-1] if messages else None

    def stream(self, delta: str) -> None:
        message = self.last()
        if message is None or message.role != "assistant":
            message = self.add("assistant")
        message.append(delta)
        self.scroll_end(animate=False)

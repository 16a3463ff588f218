"""A failed run, in full: title, message, hint and where the log is. Never just an exit code."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ErrorScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter,q", "close", "close")]

    def __init__(self, title: str, message: str, hint: str | None, log_path: str = "") -> None:
        super().__init__(classes="modal")
        self.error_title = title
        self.message = message
        self.hint = hint
        self.log_path = log_path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error"):
            yield Static(f"[b $error]✖ {escape(self.error_title)}[/]", classes="title")
            with VerticalScroll(classes="body"):
                yield Static(escape(self.message), id="message")
                if self.hint:
                    yield Static(f"[b]Hint:[/] {escape(self.hint)}", id="hint")
                if self.log_path:
                    yield Static(f"[b]Log:[/] {escape(self.log_path)}", id="log-path")
            yield Button("Close (esc)", id="close", variant="primary")

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    def on_button_pressed(self) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

"""Leaving a live run's dashboard: leave the run going, stop it with a checkpoint, or cancel."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

DETACH, STOP, CANCEL = "detach", "stop", "cancel"


class QuitRunScreen(ModalScreen[str]):
    """Dismisses with ``detach``, ``stop`` or ``cancel``."""

    BINDINGS = [
        Binding("d", "answer('detach')", "leave it running"),
        Binding("s", "answer('stop')", "stop"),
        Binding("n,c,escape", "answer('cancel')", "cancel"),
    ]

    def __init__(self, *, detach_text: str, stop_text: str, question: str) -> None:
        super().__init__(classes="modal")
        self.question = question
        self.detach_text = detach_text
        self.stop_text = stop_text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            yield Static(f"[b]d[/]  {self.detach_text}", classes="choice")
            yield Static(f"[b]s[/]  {self.stop_text}", classes="choice")
            with Horizontal(classes="buttons"):
                yield Button("Leave running (d)", id=DETACH, variant="primary")
                yield Button("Stop (s)", id=STOP, variant="warning")
                yield Button("Cancel (esc)", id=CANCEL)

    def on_mount(self) -> None:
        self.query_one(f"#{CANCEL}", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or CANCEL)

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)

"""Every key, per screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("Dashboard", ""),
    ("p", "pause / resume training"),
    ("s", "save a checkpoint now"),
    ("x", "stop: checkpoint, then finish (asks first)"),
    ("c", "chat with the model (pauses training first)"),
    ("e", "export the trained adapter"),
    ("m", "smooth the loss curve (EMA) on/off"),
    ("tab", "focus the log, then scroll it with ↑ ↓"),
    ("q", "quit (asks first while a run is going)"),
    ("Chat", ""),
    ("enter", "send the prompt"),
    ("ctrl+b", "base vs fine-tuned, side by side"),
    ("ctrl+l", "clear the conversation"),
    ("tab", "move between prompt and settings"),
    ("esc", "back to the dashboard (resumes training)"),
    ("Everywhere", ""),
    ("?  f1", "this help (f1 while typing)"),
    ("ctrl+q", "quit"),
]


def keys_markup() -> str:
    lines = []
    for key, text in KEYS:
        lines.append(f"\n[b $accent]{key}[/]" if not text else f"  [b]{key:>7}[/]  {text}")
    return "\n".join(lines).lstrip("\n")


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "close")]

    def __init__(self) -> None:
        super().__init__(classes="modal")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Static("[b]finetty keys[/]  [$text-muted](esc closes)[/]", classes="title")
            with VerticalScroll(classes="body"):
                yield Static(keys_markup())

    def action_close(self) -> None:
        self.dismiss(None)

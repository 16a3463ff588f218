"""Every key, per screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

DASHBOARD = [
    ("p", "pause / resume"),
    ("s", "save a checkpoint now"),
    ("x", "stop (checkpoint first)"),
    ("c", "chat (pauses training)"),
    ("e", "export: adapter, merged, GGUF, Ollama"),
    ("m", "smooth the loss (EMA)"),
    ("tab", "focus the log; ↑ ↓ scroll"),
    ("q", "quit (asks if running)"),
]
CHAT = [
    ("enter", "send the prompt"),
    ("ctrl+b", "base vs tuned, side by side"),
    ("ctrl+l", "clear the conversation"),
    ("tab", "prompt ↔ settings"),
    ("esc", "back (resumes training)"),
]
EVERYWHERE = [("?  f1", "this help"), ("ctrl+q", "quit")]


def keys_markup(*sections: tuple[str, list[tuple[str, str]]]) -> str:
    lines = []
    for heading, keys in sections:
        lines.append(f"[b $accent]{heading}[/]")
        lines += [f"[b]{key:>6}[/] {text}" for key, text in keys]
        lines.append("")
    return "\n".join(lines).rstrip()


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "close")]

    def __init__(self) -> None:
        super().__init__(classes="modal")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Static("[b]finetty keys[/]  [$text-muted](esc closes)[/]", classes="title")
            with Horizontal(classes="body"):
                yield Static(keys_markup(("Dashboard", DASHBOARD)), classes="column")
                yield Static(
                    keys_markup(("Chat", CHAT), ("Everywhere", EVERYWHERE)), classes="column"
                )

    def action_close(self) -> None:
        self.dismiss(None)

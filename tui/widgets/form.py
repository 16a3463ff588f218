"""Form fields bound to preset keys: a label, an input that fits the key's type, an error line.

The widget kinds come from the pydantic schema (bool -> Checkbox, a closed Literal -> Select,
anything else -> Input), and each field's help text is the docstring under it in engine/config/schema.py.
Fields post ``FormField.Changed(key, text)``; the screen updates the draft and sets the errors.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Checkbox, Input, Label, Select, Static

from engine.config.schema import Preset
from tui.wizard_state import as_text


def schema_field(key: str) -> tuple[Any, str]:
    """(annotation, help text) of a dotted preset key."""
    model: type[BaseModel] = Preset
    parts = key.split(".")
    for part in parts[:-1]:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    info = model.model_fields[parts[-1]]
    return info.annotation, (info.description or "").strip()


def choices(annotation: Any) -> list[str] | None:
    """The options of a closed ``Literal[...]`` (not of ``int | Literal["auto"]``)."""
    if typing.get_origin(annotation) is Literal:
        return [str(option) for option in typing.get_args(annotation)]
    return None


class FormField(Vertical, can_focus=False):
    """One preset key: its name and the input; the error line shows the CLI's message."""

    DEFAULT_CSS = """
    FormField {
        height: auto; margin: 0 0 1 0; padding: 0 1; border-left: outer $panel;
    }
    FormField:focus-within { border-left: outer $accent; background: $boost; }
    FormField .field--label { width: 1fr; text-style: bold; }
    FormField:focus-within .field--label { color: $accent; }
    FormField .field--help { width: 1fr; color: $text-muted; }
    FormField .field--error { width: 1fr; color: $text-error; display: none; }
    FormField.-invalid { border-left: outer $error; }
    FormField.-invalid .field--error { display: block; }
    FormField Input, FormField Select { width: 1fr; }
    FormField Input { background: $surface-lighten-1; }
    FormField Input:focus { background: $accent 25%; }
    FormField.-invalid Input { background: $error 20%; }
    FormField Checkbox { width: 1fr; background: $surface-lighten-1; }
    FormField Checkbox:focus { background: $accent 25%; }
    """

    class Changed(Message):
        def __init__(self, key: str, text: str) -> None:
            super().__init__()
            self.key, self.text = key, text

    def __init__(
        self,
        key: str,
        value: Any,
        text: str | None = None,
        *,
        suggestions: list[str] | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(id="field-" + key.replace(".", "-"))
        self.key = key
        self.annotation, self.help = schema_field(key)
        self._value = value
        self._text = text if text is not None else as_text(value)
        self._suggestions = suggestions
        self._label = label or key

    def compose(self) -> ComposeResult:
        yield Label(self._label, classes="field--label")
        if self.help:
            yield Static(self.help, classes="field--help", markup=False)
        options = choices(self.annotation)
        if self.annotation is bool:
            on = bool(self._value)
            yield Checkbox("on" if on else "off", on, id="input", compact=True)
        elif options is not None:
            value = self._text if self._text in options else Select.NULL
            yield Select(
                [(opt, opt) for opt in options],
                value=value,
                allow_blank=False,
                id="input",
                compact=True,
            )
        else:
            suggester = SuggestFromList(self._suggestions) if self._suggestions else None
            yield Input(
                self._text, placeholder="(none)", suggester=suggester, id="input", compact=True
            )
        yield Static("", classes="field--error", markup=False)

    @property
    def control(self) -> Input | Select | Checkbox:
        return self.query_one("#input")  # type: ignore[return-value]

    def set_value(self, value: Any, text: str | None = None) -> None:
        """Show a value (e.g. after a preset loads) without posting Changed."""
        control = self.control
        with control.prevent(Input.Changed, Select.Changed, Checkbox.Changed):
            if isinstance(control, Checkbox):
                control.value = bool(value)
                control.label = "on" if value else "off"
            elif isinstance(control, Select):
                control.value = as_text(value)
            else:
                control.value = text if text is not None else as_text(value)

    def set_error(self, message: str | None) -> None:
        self.set_class(bool(message), "-invalid")
        self.query_one(".field--error", Static).update(f"✗ {message}" if message else "")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self.key, event.value))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self.key, str(event.value)))

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        event.checkbox.label = "on" if event.value else "off"
        self.post_message(self.Changed(self.key, "true" if event.value else "false"))

"""The wizard's shared frame: step bar, a scrolling form, Back/Next, and validate-as-you-type.

Steps navigate with ``switch_screen``, rebuilding each screen from the shared draft
(``WizardState``), so what was typed survives back and forward by construction. Each step is
handed the flow, the step classes in order (tui.screens.wizard_flow), so this frame never
imports the steps that subclass it. The wizard itself posts nothing outward; the review step
posts Launch/Probe.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.markup import escape
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Static
from textual.worker import get_current_worker

from tui.widgets.form import FormField
from tui.wizard_state import WizardState

STEPS = ("Model", "Dataset", "Method", "Training", "Review")
TITLE_WIDTH = 19


class StepBar(Static):
    DEFAULT_CSS = """
    StepBar { height: 1; width: 1fr; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def __init__(self, current: int, title: str = "New run") -> None:
        parts = []
        for index, name in enumerate(STEPS):
            style = "bold $background on $accent" if index == current else ""
            parts.append(f"[{style}] {index + 1} {name} [/]" if style else f" {index + 1} {name} ")
        # 56 cells of steps + the title must fit 80 columns: long preset names are cut.
        title = title if len(title) <= TITLE_WIDTH else title[: TITLE_WIDTH - 1] + "…"
        super().__init__(f"[b]{escape(title)}[/b]  " + "›".join(parts))


class WizardStep(Screen):
    """Base of every wizard step; subclasses list their KEYS and compose the body.

    ``flow``: every step's class, in order (``flow[STEP]`` is this one's); Next and Back build
    the neighbour from it."""

    STEP: ClassVar[int] = 0
    NEXT_LABEL: ClassVar[str] = "Next ›"
    KEYS: ClassVar[tuple[str, ...]] = ()
    DEFAULT_CSS = """
    WizardStep { layout: vertical; }
    WizardStep #wizard-body { height: 1fr; padding: 0 1; scrollbar-gutter: stable; }
    WizardStep .wizard-title { text-style: bold; color: $accent; margin: 1 0 0 0; }
    WizardStep .wizard-panel {
        height: auto; border: round $primary; padding: 0 1; margin: 0 0 1 0;
    }
    WizardStep #wizard-nav {
        height: 1; align: right middle; padding: 0 1; background: $panel;
    }
    WizardStep #wizard-nav Button { margin: 0 0 0 2; min-width: 10; }
    WizardStep #wizard-status { width: 1fr; height: 1; }
    """
    BINDINGS: ClassVar = [
        Binding("ctrl+n", "next", "Next"),
        Binding("ctrl+b", "back", "Back"),
        Binding("escape", "back", "Back", show=False),
    ]

    def __init__(
        self, state: WizardState | None = None, *, flow: Sequence[type[WizardStep]]
    ) -> None:
        super().__init__()
        self.state = state or WizardState()
        self.flow = tuple(flow)

    def compose(self) -> ComposeResult:
        source = self.state.source
        yield StepBar(self.STEP, source.stem if source else "New run")
        with VerticalScroll(id="wizard-body"):
            yield Static(f"{self.STEP + 1}. {STEPS[self.STEP]}", classes="wizard-title")
            yield from self.compose_body()
        with Horizontal(id="wizard-nav"):
            yield Static("", id="wizard-status")
            yield Button("‹ Back", id="back", compact=True)
            yield from self.extra_buttons()
            yield Button(self.NEXT_LABEL, id="next", variant="primary", compact=True)
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from self.fields(self.KEYS)

    def extra_buttons(self) -> ComposeResult:
        yield from ()

    def fields(self, keys: tuple[str, ...], **extra: list[str]) -> ComposeResult:
        for key in keys:
            yield FormField(
                key, self.state.get(key), self.state.text(key), suggestions=extra.get(key)
            )

    def on_mount(self) -> None:
        self.revalidate()
        first = self.query(FormField).first(FormField) if self.query(FormField) else None
        if first is not None:
            first.control.focus()

    def on_form_field_changed(self, event: FormField.Changed) -> None:
        if event.text == self.state.text(event.key):
            return  # widgets report their initial value on mount: nothing changed
        self.state.set_text(event.key, event.text)
        self.revalidate()
        self.field_changed(event.key)

    def field_changed(self, key: str) -> None:
        """Hook for live panels (parameter counts, previews)."""

    def debounce(self, callback: Callable[[], object], delay: float = 0.3) -> None:
        """Run ``callback`` once typing pauses, so each key press doesn't start a worker."""
        pending = getattr(self, "_debounced", None)
        if pending is not None:
            pending.stop()
        self._debounced = self.set_timer(delay, callback)

    def revalidate(self) -> dict[str, str]:
        errors = self.state.field_errors()
        for form_field in self.query(FormField):
            form_field.set_error(errors.get(form_field.key))
        mine = [key for key in errors if key in self.KEYS]
        others = len(errors) - len(mine)
        status = self.query_one("#wizard-status", Static)
        if mine:
            status.update(f"[$text-error]{len(mine)} field{'s' * (len(mine) > 1)} to fix[/]")
        elif others:
            status.update(f"[$text-warning]{others} problem{'s' * (others > 1)} on other steps[/]")
        else:
            status.update("[$text-success]✓ valid[/]")
        return errors

    def step_errors(self) -> list[str]:
        return [key for key in self.revalidate() if key in self.KEYS]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "next":
            self.action_next()
        elif event.button.id == "back":
            self.action_back()

    def action_next(self) -> None:
        bad = self.step_errors()
        if bad:
            self.notify(f"Fix {', '.join(bad)} first.", severity="error")
            self.query_one(f"#field-{bad[0].replace('.', '-')}", FormField).control.focus()
            return
        self.app.switch_screen(self.step(self.STEP + 1))

    def action_back(self) -> None:
        if self.STEP == 0:
            if len(self.app.screen_stack) > 1:
                self.app.pop_screen()
        else:
            self.app.switch_screen(self.step(self.STEP - 1))

    def step(self, index: int) -> WizardStep:
        """Step ``index`` of this flow, on the same draft."""
        return self.flow[index](self.state, flow=self.flow)

    def show(self, widget_id: str, content: str) -> None:
        with contextlib.suppress(NoMatches):
            self.query_one(f"#{widget_id}", Static).update(content)

    def from_thread(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback`` on the UI thread, unless a newer worker replaced this one."""
        if not get_current_worker().is_cancelled:
            with contextlib.suppress(RuntimeError, NoMatches):  # the app or screen is closing
                self.app.call_from_thread(callback, *args)

    def snapshot(self) -> WizardState:
        """A copy of the draft for a worker thread to read while the user keeps typing."""
        return WizardState(data=copy.deepcopy(self.state.data))

    def field(self, key: str) -> FormField:
        return self.query_one(f"#field-{key.replace('.', '-')}", FormField)

    def panel(self, widget_id: str, title: str) -> Widget:
        panel = Static("", id=widget_id, classes="wizard-panel")
        panel.border_title = title
        return panel

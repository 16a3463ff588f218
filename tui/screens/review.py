"""Wizard step 5, review: the whole config, the memory/fit estimate, the equivalent command,
"save as preset", Probe and Launch.

Posts ``ReviewScreen.Launch(preset, path)`` and ``ReviewScreen.Probe(preset)``; the app starts
the run. ``finetty PRESET.yaml`` opens this screen directly with ``WizardState.from_file``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import ClassVar

import yaml
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from engine.config.presets import list_presets, to_yaml
from engine.config.schema import Preset
from engine.core.errors import ConfigError, FinettyError
from tui.screens.wizard import WizardStep
from tui.wizard_state import save_path

PANEL_WIDTH = 72  # text columns inside a review panel at 80 columns
_LABEL = re.compile(r"^\s*(?:\S+:?\s+|- )")


def hang(text: str, width: int = PANEL_WIDTH) -> str:
    """Wrap long lines under their value column (``  model    long value...``), instead of
    letting the panel wrap them back to column 0."""
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        label = _LABEL.match(line)
        indent = min(len(label.group(0)) if label else 0, width // 3)
        out += textwrap.wrap(line, width, subsequent_indent=" " * indent) or [line]
    return "\n".join(out)


def estimate_text(preset: Preset) -> str:
    """What `finetty estimate` prints for this preset on this machine's device."""
    from engine.plan.estimate import estimate_for, format_estimate
    from tui import wizard_device

    try:
        return format_estimate(estimate_for(preset, wizard_device.device_spec()))
    except FinettyError as exc:
        return f"✗ {exc.message}" + (f"\n  {exc.hint}" if exc.hint else "")


class ConfirmOverwrite(ModalScreen[bool]):
    """Asks before a saved preset replaces (or shadows) another one."""

    DEFAULT_CSS = """
    ConfirmOverwrite { align: center middle; }
    ConfirmOverwrite > Vertical {
        width: 60; max-width: 100%; height: auto; border: thick $warning; background: $surface;
        padding: 1 2;
    }
    ConfirmOverwrite Horizontal { height: auto; align: right middle; margin: 1 0 0 0; }
    ConfirmOverwrite Button { margin: 0 0 0 2; }
    """
    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            with Horizontal():
                yield Button("Cancel", id="cancel")
                yield Button("Overwrite", id="overwrite", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "overwrite")

    def action_cancel(self) -> None:
        self.dismiss(False)


class ReviewScreen(WizardStep):
    STEP = 4
    KEYS: ClassVar[tuple[str, ...]] = ("name", "description")
    NEXT_LABEL = "Launch ▶"
    DEFAULT_CSS = """
    ReviewScreen .review-text { height: auto; border: round $primary; padding: 0 1; margin: 0 0 1 0; }
    ReviewScreen #review-problems { border: round $error; color: $text-error; }
    ReviewScreen #review-problems.-ok { border: round $success; color: $text-success; }
    ReviewScreen #gpus-label { padding: 0 2; }
    ReviewScreen #gpus { margin: 0 2 1 2; width: 24; }
    """
    BINDINGS: ClassVar = [
        Binding("ctrl+n", "next", "Launch"),
        Binding("ctrl+s", "save", "Save preset"),
        Binding("l", "key('next')", "Launch", show=False),
        Binding("s", "key('save')", "Save", show=False),
        Binding("p", "key('probe')", "Probe"),
    ]

    class Launch(Message):
        """Start a run with this validated preset (``path``: its file, if saved or loaded)."""

        def __init__(self, preset: Preset, path: Path | None, gpus: int = 1) -> None:
            super().__init__()
            self.preset, self.path, self.gpus = preset, path, gpus

    class Probe(Message):
        """Run a short probe of this preset (a few steps) to measure memory and speed."""

        def __init__(self, preset: Preset) -> None:
            super().__init__()
            self.preset = preset

    class ProbeUpdate(Message):
        """From the probe's threads: a progress line, or the result (``done``)."""

        def __init__(self, preset: Preset, text: str, *, done: bool = False, ok: bool = True):
            super().__init__()
            self.preset, self.text, self.done, self.ok = preset, text, done, ok

    probing = False

    def compose_body(self) -> ComposeResult:
        yield from self.fields(self.KEYS)
        from tui.launch import visible_gpu_count

        count = visible_gpu_count()
        if count > 1:  # one process per GPU under torchrun; the dashboard then watches the job
            yield Label(
                "[b]GPUs[/]\n[$text-muted]One process each under torchrun (DDP; FSDP for method full).[/]",
                id="gpus-label",
            )
            yield Select(
                [(f"{n} GPU{'s' if n > 1 else ''}", n) for n in range(1, count + 1)],
                value=1,
                allow_blank=False,
                id="gpus",
                compact=True,
            )
        for widget_id, title in (
            ("review-problems", "Validation"),
            ("review-command", "Command"),
            ("review-estimate", "Memory and time estimate"),
            ("review-yaml", "Config (YAML)"),
        ):
            panel = Static("", id=widget_id, classes="review-text", markup=False)
            panel.border_title = title
            yield panel

    def extra_buttons(self) -> ComposeResult:
        yield Button("Save preset", id="save", compact=True)
        yield Button("Probe", id="probe", compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.refresh_review()

    def field_changed(self, key: str) -> None:
        self.refresh_review()

    def refresh_review(self) -> None:
        problems = self.state.problems()
        panel = self.query_one("#review-problems", Static)
        panel.set_class(not problems, "-ok")
        text = "\n".join(f"✗ {p}" for p in problems) or "✓ valid: ready to launch"
        # Running a repository's own code is a trust decision: say so where the launch happens.
        if self.state.get("model.trust_remote_code"):
            text += (
                "\n⚠ model.trust_remote_code is on: the model repository's Python code will run."
            )
        if self.state.get("model.allow_pickle_weights"):
            text += "\n⚠ model.allow_pickle_weights is on: .bin weights can run code when loaded."
        panel.update(text)
        self.query_one("#next", Button).disabled = bool(problems)
        self.query_one("#probe", Button).disabled = bool(problems)
        gpus = self.gpus()
        command = self.state.command() + (f" --gpus {gpus}" if gpus > 1 else "")
        self.query_one("#review-command", Static).update(command)
        if problems:
            text = yaml.safe_dump(self.state.data, sort_keys=False, allow_unicode=True)
            self.show("review-estimate", "(fix the problems above to estimate)")
        else:
            preset = self.state.preset()
            text = to_yaml(preset)
            self.show("review-estimate", "estimating…")
            self.estimate(preset)
        self.query_one("#review-yaml", Static).update(hang(text.rstrip(), self.panel_width()))

    def gpus(self) -> int:
        found = self.query("#gpus")
        return int(found.first(Select).value) if found else 1  # type: ignore[arg-type]

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "gpus":
            self.refresh_review()

    def panel_width(self) -> int:
        return self.query_one("#review-estimate").content_region.width or PANEL_WIDTH

    def show(self, widget_id: str, content: str) -> None:
        if widget_id == "review-estimate":
            content = hang(content, self.panel_width())
        super().show(widget_id, content)

    @work(thread=True, exclusive=True, group="review-estimate")
    def estimate(self, preset: Preset) -> None:
        self.from_thread(self.show, "review-estimate", estimate_text(preset))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Single-key shortcuts are for the keyboard user, never for someone typing a name.
        return not (action == "key" and isinstance(self.focused, Input))

    def action_key(self, action: str) -> None:
        getattr(self, f"action_{action}")()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "probe":
            self.action_probe()
        else:
            super().on_button_pressed(event)

    def validated(self) -> Preset | None:
        try:
            return self.state.preset()
        except ConfigError as exc:
            self.notify(exc.problems[0], title="Fix before launching", severity="error")
            return None

    def action_next(self) -> None:
        if self.probing:
            self.notify("Wait for the probe to finish: it holds the model.", severity="warning")
            return
        preset = self.validated()
        if preset is not None:
            self.post_message(self.Launch(preset, self.state.source, self.gpus()))

    def action_probe(self) -> None:
        if self.probing:
            self.notify("A probe is already running.")
            return
        preset = self.validated()
        if preset is not None:
            self.post_message(self.Probe(preset))

    # -- the probe (started by the app, which knows the runs folder) ---------------------------
    def start_probe(self, preset: Preset, runs_root: Path | None) -> None:
        """Run a few real steps on a worker; the estimate panel shows progress, then the result."""
        from engine.diagnose.probe import DEFAULT_STEPS

        self.probing = True
        self.query_one("#probe", Button).disabled = True
        self.show("review-estimate", f"probing: {DEFAULT_STEPS} real steps, loading the engine…")
        self.query_one("#review-estimate").scroll_visible(animate=False)
        self._probe(preset, runs_root)

    @work(thread=True, group="review-probe")
    def _probe(self, preset: Preset, runs_root: Path | None) -> None:
        from tui.quiet import quiet_libraries

        quiet_libraries()
        from engine.diagnose import probe as probing

        def progress(text: str) -> None:  # called on the engine's thread: post, never block
            self.post_message(self.ProbeUpdate(preset, f"probing: {text}…"))

        try:
            result = probing.probe(preset, probing.DEFAULT_STEPS, runs_root, progress=progress)
        except FinettyError as exc:
            hint = f"\n  {exc.hint}" if exc.hint else ""
            text = f"✗ probe failed: {exc.message}{hint}"
            self.post_message(self.ProbeUpdate(preset, text, done=True, ok=False))
            return
        text = probing.format_probe(result)
        self.post_message(self.ProbeUpdate(preset, text, done=True, ok=result.fits))

    def on_review_screen_probe_update(self, message: ProbeUpdate) -> None:
        message.stop()
        if message.done:
            self.probing = False
            self.query_one("#probe", Button).disabled = bool(self.state.problems())
        current = None if self.state.problems() else self.state.preset()
        if current != message.preset:  # edited since: the figures are for other settings
            if message.done:
                self.notify("The settings changed during the probe: probe again.")
            return
        self.show("review-estimate", message.text)
        if message.done:
            title = "Probe done" if message.ok else "Probe: does not fit or failed"
            self.notify(
                message.text.splitlines()[0],
                title=title,
                severity="information" if message.ok else "error",
            )

    def action_save(self) -> None:
        preset = self.validated()
        if preset is None:
            return
        path = save_path(preset.name)
        bundled = {info.name for info in list_presets() if info.origin == "bundled"}
        if path.exists():
            question = f"{path} exists. Overwrite it?"
        elif preset.name in bundled:
            question = f"'{preset.name}' is a bundled preset; save a user copy that shadows it?"
        else:
            self.save(preset, path)
            return
        self.app.push_screen(
            ConfirmOverwrite(question), lambda yes: self.save(preset, path) if yes else None
        )

    def save(self, preset: Preset, path: Path) -> None:
        try:
            self.state.save(preset, path)
        except OSError as exc:
            self.notify(f"Cannot write {path}: {exc.strerror}", severity="error")
            return
        self.notify(f"Saved {path}", title="Preset saved")
        self.refresh_review()

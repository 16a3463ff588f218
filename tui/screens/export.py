"""Export dialog: adapter, merged 16-bit model, GGUF (+ Ollama Modelfile), as `finetty export` does.

The form maps one to one onto ``engine.export.export_run``, which runs in a child process
(``engine.export.child``): a native crash or the out-of-memory killer there ends that child,
never this process, which may be training. A thread worker waits for it and relays ``progress``
messages, so the UI stays live; the status line's clock moves twice a second, the bar pulses
where a step has no measure, and shows the fraction and an ETA where it has. What was written
is listed with its size, its round-trip checks and the ``ollama create`` command; an export
error shows its message and hint here, and the form stays editable for another try.

"push to hub" does what `finetty export --push` does: the hub is checked first (login, network,
rights, name free) in the worker, before the export, and the repo URL is shown only once the
one commit landed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Input, Label, ProgressBar, Select, Static

Exporter = Callable[..., Any]  # engine.export.export_run's signature
DTYPES = [(f"dtype {d}", d) for d in ("auto", "bf16", "fp16")]  # auto: as the CLI decides
# The engine's hints name CLI flags; the dialog names its own fields instead.
HINT_WORDS = (
    ("Pass --force to replace it", "Tick 'force' to replace it"),
    ("with --out DIR", "in 'target folder'"),
    ("with --out", "in 'target folder'"),
    ("Use --format merged or --format gguf", "Choose merged or GGUF"),
    ("--format merged", "merged"),
    ("Pass --force to commit", "Tick 'force' to commit"),
    ("Run it again with --force", "Tick 'force' and export again"),
    (" or --revision.", "."),
)


def parse_quants(text: str) -> list[str]:
    """The CLI's reading of --quant: a comma list, case-insensitive, blanks dropped."""
    return [q.strip().lower() for q in text.split(",") if q.strip()]


def quant_problem(text: str) -> tuple[str, str | None] | None:
    """The CLI's message (and hint) for a bad GGUF type list; None when it is valid."""
    quants = parse_quants(text)
    if not quants:
        return "Enter at least one GGUF type, e.g. q8_0.", None
    if "engine.export" not in sys.modules:
        return None  # still loading off the UI thread; the form validates again once it is in
    from engine.export import check_choices
    from engine.export.files import ExportError

    try:
        check_choices(["gguf"], quants, None)
    except ExportError as error:
        return error.message, error.hint
    return None


def dialog_hint(hint: str) -> str:
    for cli, dialog in HINT_WORDS:
        hint = hint.replace(cli, dialog)
    return hint


class Tick(Checkbox):
    """A compact checkbox whose mark is a character, so on and off differ without colour."""

    def __init__(self, label: str, value: bool, *, id: str, disabled: bool = False) -> None:
        super().__init__(label, value, id=id, disabled=disabled, compact=True)

    @property
    def _button(self) -> Any:
        self.BUTTON_INNER = "X" if self.value else " "
        return super()._button


class ExportScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("ctrl+s", "export", "export"),
    ]
    DEFAULT_CSS = """
    ExportScreen #export-body { padding: 0 1; }
    ExportScreen #formats-row { height: 1; margin: 1 0; }
    ExportScreen #formats-label { width: 9; color: $text-muted; }
    ExportScreen .field-row { height: 3; }
    ExportScreen Checkbox { margin-right: 2; background: $surface-lighten-1; }
    ExportScreen .field-row Checkbox { margin-top: 1; }
    ExportScreen Checkbox:focus { background: $accent 25%; text-style: bold; }
    ExportScreen #dtype { width: 15; margin-right: 2; }
    ExportScreen #quants { width: 32; margin-right: 1; }
    ExportScreen #out { width: 1fr; margin-right: 1; }
    ExportScreen #push { width: 1fr; margin-right: 1; }
    ExportScreen #quant-error { height: auto; color: $text-error; padding: 0 1; }
    ExportScreen #quant-error.-hidden, ExportScreen #progress.-hidden { display: none; }
    ExportScreen #action-row { height: 1; margin-top: 1; }
    ExportScreen #run-export { margin-right: 2; }
    ExportScreen #status { width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    ExportScreen #progress { margin-right: 2; }
    ExportScreen #progress Bar { width: 20; }
    ExportScreen #result { height: auto; margin-top: 1; }
    ExportScreen #not-ready { margin-top: 1; height: auto; }
    """
    PROGRESS_INTERVAL = 0.1  # seconds between fraction updates: bounded redraws over SSH

    class EngineLoaded(Message):
        pass

    class Progress(Message):
        def __init__(self, text: str, fraction: float | None) -> None:
            super().__init__()
            self.text, self.fraction = text, fraction

    class Finished(Message):
        def __init__(
            self,
            report: Any = None,
            error: tuple[str, str | None] | None = None,
            pushed: Any = None,  # engine.export.hub.PushReport, once the commit landed
        ) -> None:
            super().__init__()
            self.report, self.error, self.pushed = report, error, pushed

    def __init__(self, run_dir: Path | None, *, exporter: Exporter | None = None) -> None:
        super().__init__(id="export")
        self.run_dir = run_dir
        self.final = run_dir / "final" if run_dir else None
        self.exporter = exporter
        self.running = False
        self.leave_asked = False
        self.blocked_shown = False
        self.started = 0.0
        # The current step: its text, its fraction (None: no measure, the bar pulses) and when
        # it began, for its ETA. The status line is redrawn twice a second from these, so the
        # elapsed time moves even while a step reports nothing.
        self.step_text, self.step_fraction, self.step_started = "", None, 0.0

    @property
    def ready(self) -> bool:
        return self.final is not None and self.final.is_dir()

    @property
    def is_adapter(self) -> bool:
        return self.final is not None and (self.final / "adapter_config.json").is_file()

    def compose(self) -> ComposeResult:
        yield Static("[b]export[/] · " + escape(str(self.run_dir or "no run")), id="export-title")
        with VerticalScroll(id="export-body"):
            if not self.ready:
                yield Static(
                    "Nothing can be exported yet: the trained model is written to final/ when "
                    "the run finishes. Come back then.",
                    id="not-ready",
                )
                return
            adapter = self.is_adapter
            with Horizontal(id="formats-row"):
                yield Label("formats", id="formats-label")
                yield Tick("adapter", adapter, id="fmt-adapter", disabled=not adapter)
                yield Tick("merged 16-bit", not adapter, id="fmt-merged")
                yield Select(DTYPES, value="auto", allow_blank=False, id="dtype", compact=True)
                yield Tick("GGUF", False, id="fmt-gguf")
            with Horizontal(classes="field-row"):
                yield Input("q8_0", placeholder="q8_0, f16, q4_k_m…", id="quants")
                yield Tick("Ollama Modelfile", False, id="ollama")
            yield Static("", id="quant-error", classes="-hidden", markup=False)
            with Horizontal(classes="field-row"):
                target = self.run_dir / "exports" if self.run_dir else Path("exports")
                yield Input(str(target), placeholder="folder", id="out")
                yield Tick("force", False, id="force")
            with Horizontal(classes="field-row"):
                yield Input("", placeholder="NAME or NAMESPACE/NAME (empty: no push)", id="push")
                yield Tick("private", False, id="private", disabled=True)
            with Horizontal(id="action-row"):
                yield Button("Export", id="run-export", variant="primary", compact=True)
                yield ProgressBar(total=100, show_eta=False, id="progress", classes="-hidden")
                yield Static("", id="status")
            yield Static("", id="result")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(0.5, self.tick)
        if self.ready:
            self.query_one("#quants").border_title = "GGUF types (comma list)"
            self.query_one("#out").border_title = "target folder"
            self.query_one("#push").border_title = "push to hub"
            self.query_one("#fmt-adapter" if self.is_adapter else "#fmt-merged").focus()
            self.refresh_form()
            if "engine.export" not in sys.modules:
                self.load_engine()

    @work(thread=True, group="export-import")
    def load_engine(self) -> None:
        """engine.export (numpy, ~0.5 s cold) loads off the UI thread; then the form validates."""
        import engine.export  # noqa: F401

        self.post_message(self.EngineLoaded())  # dropped if the dialog was closed meanwhile

    def on_export_screen_engine_loaded(self) -> None:
        self.refresh_form()

    # -- the form -------------------------------------------------------------------------------
    def value(self, widget_id: str) -> Any:
        return self.query_one(f"#{widget_id}").value  # type: ignore[attr-defined]

    def formats(self) -> list[str]:
        return [f for f in ("adapter", "merged", "gguf") if self.value(f"fmt-{f}")]

    def form_problem(self) -> str | None:
        """Why Export cannot run now (shown in the status line), or None."""
        if not self.formats():
            return "Choose at least one format."
        if self.value("fmt-gguf") and quant_problem(self.value("quants")):
            return "Fix the GGUF types first."
        if not str(self.value("out")).strip():
            return "Enter a target folder."
        return None

    def refresh_form(self) -> None:
        gguf = bool(self.value("fmt-gguf"))
        quants, ollama = self.query_one("#quants", Input), self.query_one("#ollama", Checkbox)
        quants.disabled = ollama.disabled = not gguf
        self.query_one("#private", Checkbox).disabled = not str(self.value("push")).strip()
        self.query_one("#dtype", Select).disabled = not (self.value("fmt-merged") or gguf)
        problem = quant_problem(quants.value) if gguf else None
        quants.set_class(problem is not None, "-invalid")
        error = self.query_one("#quant-error", Static)
        error.set_class(problem is None, "-hidden")
        if problem is not None:
            message, hint = problem
            error.update(f"✗ {message}" + (f" {hint}" if hint else ""))
        if not self.running:
            blocked = self.form_problem()
            self.query_one("#run-export", Button).disabled = blocked is not None
            if blocked is not None:  # say why Export is greyed out
                self.show_status(f"[$text-warning]{escape(blocked)}[/]")
                self.blocked_shown = True
            elif self.blocked_shown:
                self.show_status("")
                self.blocked_shown = False

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.refresh_form()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.refresh_form()

    def on_select_changed(self, event: Select.Changed) -> None:
        self.refresh_form()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_export()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run-export":
            self.action_export()

    # -- exporting ------------------------------------------------------------------------------
    def action_export(self) -> None:
        if not self.ready or self.running:
            return
        problem = self.form_problem()
        if problem is not None:
            self.show_status(f"[$text-warning]{escape(problem)}[/]")
            return
        gguf = bool(self.value("fmt-gguf"))
        dtype = self.value("dtype")
        options = {
            "quants": parse_quants(self.value("quants")) if gguf else ["q8_0"],
            "out": Path(str(self.value("out")).strip()).expanduser(),
            "ollama_files": gguf and bool(self.value("ollama")),
            "force": bool(self.value("force")),
            "dtype": None if dtype == "auto" else dtype,
        }
        push = str(self.value("push")).strip() or None
        private = bool(push) and bool(self.value("private"))
        self.running, self.leave_asked, self.started = True, False, time.monotonic()
        self.query_one("#run-export", Button).disabled = True
        bar = self.query_one("#progress", ProgressBar)
        bar.remove_class("-hidden")
        bar.update(total=None, progress=0)  # pulses until a step reports a fraction
        self.query_one("#result", Static).update("")
        self.step_text, self.step_fraction, self.step_started = "starting…", None, self.started
        self.show_status("starting…")
        self.export_worker(self.formats(), options, push, private)

    @work(thread=True, exclusive=True, group="export")
    def export_worker(
        self, formats: list[str], options: dict[str, Any], push: str | None, private: bool
    ) -> None:
        from engine.core.errors import FinettyError

        last = 0.0

        def progress(text: str, fraction: float | None = None) -> None:
            nonlocal last
            now = time.monotonic()
            partial = fraction is not None and 0 < fraction < 1
            if partial and now - last < self.PROGRESS_INTERVAL:
                return
            last = now
            self.post_message(self.Progress(text, fraction))

        try:
            exporter = self.exporter
            if exporter is None:
                from tui.quiet import quiet_libraries

                quiet_libraries()
                # A child process: a crash or OOM there never ends this one, which may train.
                from engine.export.child import export_in_child as exporter
            target = pushed = None
            if push is not None:  # refused here, before the export's work, as the CLI does
                from engine.export.hub import check_push

                progress(f"hub: checking {push}", None)
                target = check_push(push, private=private, force=bool(options["force"]))
            report = exporter(self.run_dir, formats, progress=progress, **options)
            if target is not None:
                from engine.export.hub import push_export

                pushed = push_export(target, report, progress=progress)
        except FinettyError as error:
            self.post_message(self.Finished(error=(error.message, error.hint)))
        except Exception as error:  # noqa: BLE001 - shown in the dialog, never a traceback
            self.post_message(self.Finished(error=(f"{type(error).__name__}: {error}", None)))
        else:
            self.post_message(self.Finished(report, pushed=pushed))

    def on_export_screen_progress(self, message: Progress) -> None:
        if not self.running:
            return
        fraction = None if message.fraction is None else max(0.0, min(1.0, message.fraction))
        bar = self.query_one("#progress", ProgressBar)
        now = time.monotonic()
        previous = self.step_fraction
        if fraction is None or previous is None or fraction < previous:
            self.step_started = now  # a new step: its ETA counts from here
        self.step_text, self.step_fraction = message.text, fraction
        if fraction is None:  # no measure for this step: the bar pulses, the clock runs
            bar.update(total=None)
        else:
            bar.update(total=100, progress=100 * fraction)
        self.tick()

    def tick(self) -> None:
        """Twice a second while exporting: elapsed time, the step, and its ETA when measured."""
        if self.running:
            self.show_status(escape(self.step_text) + self.eta_text())

    def eta_text(self) -> str:
        fraction = self.step_fraction
        spent = time.monotonic() - self.step_started
        if fraction is None or not 0.02 <= fraction < 1 or spent < 1:
            return ""
        left = spent * (1 - fraction) / fraction
        from tui.console import format_duration  # the one duration format of every screen

        return f" [$text-muted]· {fraction:.0%} · ETA {format_duration(left)}[/]"

    def on_export_screen_finished(self, message: Finished) -> None:
        self.running = False
        result = self.query_one("#result", Static)
        if message.error is not None:
            text, hint = message.error
            lines = [f"[$text-error]✗ {escape(text)}[/]"]
            if hint:
                lines.append(f"[$text-muted]{escape(dialog_hint(hint))}[/]")
            result.update("\n".join(lines))
            self.show_status("[$text-error]export failed[/]: change the settings and try again")
        else:
            self.query_one("#progress", ProgressBar).update(total=100, progress=100)
            result.update(report_text(message.report, message.pushed))
            count = len(message.report.items)
            pushed = " and pushed" if message.pushed is not None else ""
            self.show_status(
                f"[$text-success]✓ {count} item{'s' * (count != 1)} written{pushed}[/]"
            )
        self.blocked_shown = False
        self.refresh_form()
        body = self.query_one("#export-body", VerticalScroll)
        self.call_after_refresh(body.scroll_end, animate=False)

    def show_status(self, text: str) -> None:
        elapsed = (
            f"[$text-muted]{time.monotonic() - self.started:5.1f}s[/] " if self.running else ""
        )
        self.query_one("#status", Static).update(elapsed + text)

    def action_back(self) -> None:
        if self.running and not self.leave_asked:
            self.leave_asked = True
            self.show_status(
                "[$text-warning]the export goes on in the background if you leave; "
                "escape again to leave[/]"
            )
            return
        self.dismiss(None)


def report_text(report: Any, pushed: Any = None) -> str:
    """Each written item: kind, size, name (in the out folder), its checks and command, if any;
    then where it was pushed, when it was."""
    # engine.export is loaded by the time a report exists; its size format is the CLI's too.
    from engine.export.files import human_size

    rows = [f"[b]Written to {escape(str(report.out_dir))}:[/]"]
    for item in report.items:
        path = Path(item.path)
        shown = path.name if path.parent == Path(report.out_dir) else str(path)
        rows.append(
            f"[$text-success]✓[/] [b]{item.kind:9}[/] {human_size(item.size):>10}  {escape(shown)}"
        )
        rows.extend(f"    [$text-muted]{escape(check)}[/]" for check in item.checks)
        if item.command:
            rows.append(f"    run: [b]{escape(item.command)}[/]")
    if pushed is not None:  # there only once the commit landed
        size = human_size(sum(size for _, size in pushed.files))
        rows.append(
            f"[$text-success]✓[/] [b]{'pushed':9}[/] {size:>10}  "
            f"{len(pushed.files)} files: {escape(pushed.url)}"
        )
    return "\n".join(rows)

"""The live dashboard of one run: loss and lr, throughput, progress, hardware, results, log.

Events arrive through a UiBridge and are drained in batches at a bounded rate (the bridge's
``min_interval``), so a fast GPU run never makes the UI redraw per step. Commands go to
``control`` (a Run's RunControl in-process, a RunDirControl in watch mode).
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any, Protocol

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.events import (
    CheckpointSaved,
    DatasetStats,
    Eval,
    Event,
    ExactMatch,
    Failed,
    Finished,
    HardwareSample,
    LogLine,
    RunStarted,
    StateChanged,
    Step,
)
from tui.bridge import UiBridge
from tui.messages import EventsReady, RunAttached
from tui.widgets.gauges import HardwarePanel
from tui.widgets.log_tail import LogTail
from tui.widgets.loss_chart import LossChart
from tui.widgets.throughput import ThroughputPanel

TERMINAL = ("finished", "stopped", "failed")
MODEL_FREE = ("paused", *TERMINAL)  # states in which the engine is not using the model
STATE_STYLE = {"training": "$success", "paused": "$warning", "stopping": "$warning"}
STATE_STYLE.update(failed="$error", finished="$success", stopped="$warning")


class Control(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def save(self) -> None: ...
    def stop(self) -> None: ...
    def abort(self) -> None: ...


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_bar(total: int | None, done: int, width: int = 12) -> str:
    """A text bar and percentage. Textual's ProgressBar animates on a timer of its own, which
    costs the training thread GIL time on every frame; this one changes only when a step lands."""
    fraction = min(done / total, 1.0) if total else 0.0
    filled = round(width * fraction)
    percent = f"{fraction:4.0%}" if total else "   ?"
    return f"[$accent]{'━' * filled}[/][$text-muted]{'─' * (width - filled)}[/]{percent}"


class DashboardScreen(Screen[None]):
    BINDINGS = [
        Binding("p", "pause", "pause"),
        Binding("s", "save", "save"),
        Binding("x", "stop", "stop"),
        Binding("c", "chat", "chat"),
        Binding("e", "export", "export"),
        Binding("m", "smooth", "smooth"),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit_run", "quit"),
    ]

    def __init__(
        self,
        bridge: UiBridge,
        *,
        control: Control | None = None,
        run_dir: Path | None = None,
        watch: bool = False,
        title: str = "",
    ) -> None:
        super().__init__(id="dashboard")
        self.bridge = bridge
        self.control = control
        self.run: Any = None  # engine.run.Run when the run lives in this process
        self.run_dir = run_dir
        self.watch = watch
        self.name_hint = title
        self.state = "starting"
        self.started: RunStarted | None = None
        self.last_step: Step | None = None
        self.exact: dict[str, ExactMatch] = {}
        self.failure: Failed | None = None
        self.quitting = False
        self.chat_gate: threading.Event | None = None
        self.resume_after_chat = False
        self._bindings_state: tuple[bool, bool] | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Horizontal(id="progress-row"):
            yield Static(progress_bar(None, 0), id="progress")
            yield Static(id="progress-label")
        with Horizontal(id="main"):
            yield LossChart(id="loss", classes="panel")
            with VerticalScroll(id="side", can_focus=False):
                yield ThroughputPanel(id="throughput", classes="panel")
                yield HardwarePanel(id="hardware", classes="panel")
                yield Static(id="results", classes="panel")
        yield LogTail(id="log", classes="panel")
        yield Footer()

    def on_mount(self) -> None:
        for widget_id, title in (
            ("loss", "loss · lr"),
            ("throughput", "throughput"),
            ("hardware", "hardware"),
            ("results", "exact match"),
            ("log", "log"),
        ):
            self.query_one(f"#{widget_id}").border_title = title
        self.query_one("#results").display = False
        self._paint_header()
        self.bridge.connect(self)
        # Thousands of long-lived widget objects: keep them out of the garbage collector's full
        # passes, which a training thread in this process would otherwise pay for.
        self.call_after_refresh(gc.freeze)

    def on_resize(self) -> None:
        self.set_class(self.size.width >= 120, "-wide")
        self.set_class(self.size.height >= 40, "-tall")

    def attach_run(self, run: Any) -> None:
        self.run = run
        self.control = run.control
        self.run_dir = run.run_dir
        self.refresh_bindings()
        self._paint_header()

    def on_run_attached(self, message: RunAttached) -> None:
        self.attach_run(message.run)

    # -- events --------------------------------------------------------------------------------
    def on_events_ready(self, message: EventsReady) -> None:
        wait = self.bridge.due_in()
        if wait > 0:
            self.set_timer(wait, self.drain)
        else:
            self.drain()

    def drain(self) -> None:
        events = self.bridge.drain()
        if not events:
            return
        chart = self.query_one(LossChart)
        log = self.query_one(LogTail)
        for event in events:
            self.apply(event, chart, log)
        # Repaint only the panels these events touch: a hardware sample every 2 s must not
        # re-plot the chart or re-lay out the header.
        kinds = {type(event) for event in events}
        if kinds & {Step, Eval}:
            chart.redraw()
        if Step in kinds:
            self.query_one(ThroughputPanel).show(self.last_step)
        if HardwareSample in kinds:
            self.query_one(HardwarePanel).show()
        if kinds - {HardwareSample, LogLine, Eval, CheckpointSaved}:
            self._paint_header()
        if ExactMatch in kinds:
            self._paint_results()
        if self.chat_gate is not None and self.state in MODEL_FREE:
            self.chat_gate.set()
        # The footer rebuilds all its keys on refresh_bindings: only when their state can change.
        enabled = (self.control is not None, self.terminal)
        if enabled != self._bindings_state:
            self._bindings_state = enabled
            self.refresh_bindings()
        if self.terminal and self.quitting:
            self.app.exit()
        elif self.failure is not None and any(isinstance(e, Failed) for e in events):
            self._show_failure()

    def apply(self, event: Event, chart: LossChart, log: LogTail) -> None:
        log.add_event(event)
        if isinstance(event, Step):
            self.last_step = event
            chart.add_step(event.step, event.loss, event.learning_rate)
            self.query_one(ThroughputPanel).add_step(event)
        elif isinstance(event, Eval):
            chart.add_eval(event.step, event.loss)
        elif isinstance(event, HardwareSample):
            self.query_one(HardwarePanel).add_sample(event)
        elif isinstance(event, RunStarted):
            self.started = event
            self.run_dir = self.run_dir or Path(event.run_dir)
        elif isinstance(event, DatasetStats):
            log.write_line(
                f"dataset {event.source}: {event.train_rows} train / {event.val_rows} val rows, "
                f"{event.tokens:,} tokens, {event.truncated} truncated at {event.max_length}",
                at=event.time,
            )
        elif isinstance(event, ExactMatch):
            self.exact[event.stage] = event
            log.write_line(f"exact match {event.stage}: {event.accuracy:.0%}", at=event.time)
        elif isinstance(event, StateChanged):
            self.state = event.state
        elif isinstance(event, CheckpointSaved) and event.reason == "requested":
            self.notify(f"Checkpoint saved at step {event.step}.")
        elif event.type == "alarm":  # run-health warnings (grad spikes, rising eval loss)
            self.notify(getattr(event, "message", ""), title="run health", severity="warning")
        elif isinstance(event, Finished):
            self.state = event.status
            self.notify(f"Run {event.status} at step {event.step}.", timeout=6)
        elif isinstance(event, Failed):
            self.state = "failed"
            self.failure = event

    def _show_failure(self) -> None:
        from tui.screens.error import ErrorScreen

        f = self.failure
        if f is not None:
            self.app.push_screen(ErrorScreen(f.title, f.message, f.hint, f.log_path))

    # -- painting ------------------------------------------------------------------------------
    def _paint_header(self) -> None:
        s = self.started
        name = s.name if s else self.name_hint
        parts = [f"[b]finetty[/] {escape(name)}"]
        if s:
            gpus = f" x{s.world_size}" if getattr(s, "world_size", 1) > 1 else ""
            parts.append(f"{escape(str(s.model.get('name', '')))} on {s.device}{gpus}")
        style = STATE_STYLE.get(self.state, "$text-muted")
        parts.append(f"[{style}]● {self.state}[/]")
        if self.watch:
            parts.append("[$text-muted]watching[/]")
        # Both lines are one row of fixed width (app.tcss): no relayout of the screen per step.
        self.query_one("#title", Static).update(" · ".join(parts), layout=False)
        step = self.last_step
        total = step.total_steps if step else (s.total_steps if s else None)
        done = step.step if step else (s.resumed_from_step if s else 0)
        self.query_one("#progress", Static).update(progress_bar(total, done), layout=False)
        epoch = f"epoch {step.epoch:.2f} · " if step else ""
        self.query_one("#progress-label", Static).update(
            f"step {done}/{total or '?'} · {epoch}ETA {clock(step.eta_s if step else None)}"
            f" · elapsed {clock(step.elapsed_s if step else None)}",
            layout=False,
        )

    def _paint_results(self) -> None:
        if not self.exact:
            return
        before, after = self.exact.get("before"), self.exact.get("after")
        text = " → ".join(
            f"{e.stage} [b]{e.accuracy:.0%}[/] ({e.correct}/{e.total})"
            for e in (before, after)
            if e
        )
        results = self.query_one("#results", Static)
        results.update(text)
        results.display = True

    # -- keys ----------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "save", "stop"):
            return None if self.control is None or self.terminal else True
        return True

    def action_pause(self) -> None:
        if self.control is None:
            return
        if self.state == "paused":
            self.control.resume()
            self.notify("Resuming.")
        else:
            self.control.pause()
            self.notify("Pausing at the end of this step.")

    def action_save(self) -> None:
        if self.control is not None:
            self.control.save()
            self.notify("Saving a checkpoint at the end of this step.")

    def action_stop(self) -> None:
        from tui.screens.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes and self.control is not None:
                self.control.stop()
                self.notify("Stopping: a checkpoint is written first.")

        self.app.push_screen(
            ConfirmScreen("Stop the run? A checkpoint is saved first.", yes="Stop"), answered
        )

    def action_quit_run(self) -> None:
        self.request_quit()

    def request_quit(self) -> None:
        from tui.screens.confirm import ConfirmScreen

        if self.watch or self.control is None or self.terminal:
            if len(self.app.screen_stack) > 2:  # opened from home: go back there
                self.app.pop_screen()
            else:
                self.app.exit()
            return
        control = self.control
        if self.quitting:

            def abort(yes: bool | None) -> None:
                if yes:
                    control.abort()
                    self.app.exit()

            question = "Still saving the checkpoint. Abort now, without a checkpoint?"
            self.app.push_screen(ConfirmScreen(question, yes="Abort"), abort)
            return

        if self.last_step is None:  # still loading or evaluating: nothing to checkpoint yet

            def leave(yes: bool | None) -> None:
                if yes:
                    control.abort()
                    self.app.exit()

            question = "Training has not started yet, so there is nothing to save. Quit now?"
            self.app.push_screen(ConfirmScreen(question, yes="Quit"), leave)
            return

        def stop(yes: bool | None) -> None:
            if yes:
                self.quitting = True
                control.stop()
                self.notify("Stopping: saving a checkpoint, then quitting.", timeout=10)

        self.app.push_screen(ConfirmScreen("Stop the run (checkpoint) and quit?", yes="Quit"), stop)

    def action_smooth(self) -> None:
        chart = self.query_one(LossChart)
        chart.smoothing = not chart.smoothing

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen())

    def action_export(self) -> None:
        from tui.screens.export import ExportScreen

        self.app.push_screen(ExportScreen(self.run_dir))

    def action_chat(self) -> None:
        from tui.screens.chat import ChatScreen, model_reply_stream, run_dir_loader

        run = self.run
        if run is not None and run.model is not None:
            self.chat_gate = threading.Event()
            if self.state == "training" and self.control is not None:
                self.control.pause()
                self.resume_after_chat = True
            if self.state in MODEL_FREE:
                self.chat_gate.set()
            stream = model_reply_stream(run.model, run.tokenizer, run.chat_template)
            screen = ChatScreen(
                reply_stream=stream,
                description=f"{run.preset.name} (in memory)",
                can_compare=hasattr(run.model, "disable_adapter"),
                gate=self.chat_gate,
            )
        elif self.run_dir is not None and (self.run_dir / "final").is_dir():
            screen = ChatScreen(loader=run_dir_loader(self.run_dir), description=str(self.run_dir))
        else:
            self.notify("Chat needs the model: wait until it has loaded or the run has finished.")
            return
        self.app.push_screen(screen, self._chat_closed)

    def _chat_closed(self, _: object = None) -> None:
        self.chat_gate = None
        if self.resume_after_chat and self.control is not None and not self.terminal:
            self.control.resume()
        self.resume_after_chat = False

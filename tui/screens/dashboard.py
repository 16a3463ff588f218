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

from engine.core.events import (
    CheckpointSaved,
    DatasetStats,
    Eval,
    Event,
    ExactMatch,
    Failed,
    Finished,
    HardwareSample,
    LogLine,
    PreferenceAccuracy,
    Progress,
    RunStarted,
    Step,
)
from engine.core.units import duration
from engine.runs import runstate
from engine.runs.rundir import preference_text
from engine.runs.runstate import RunState
from tui.bridge import UiBridge
from tui.console import lengths_phrase, progress_line
from tui.messages import EventsReady, RunAttached
from tui.widgets.gauges import HardwarePanel
from tui.widgets.log_tail import LogTail
from tui.widgets.loss_chart import LossChart
from tui.widgets.throughput import ThroughputPanel

TERMINAL = tuple(runstate.TERMINAL)
STATE_STYLE = {"training": "$success", "paused": "$warning", "stopping": "$warning"}
STATE_STYLE.update(failed="$error", finished="$success", stopped="$warning")


class Control(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def save(self) -> None: ...
    def stop(self) -> None: ...
    def abort(self) -> None: ...


def progress_bar(total: int | None, done: float, width: int = 12) -> str:
    """A text bar and percentage. Textual's ProgressBar animates on a timer of its own, which
    costs the training thread GIL time on every frame; this one changes only when a step lands."""
    fraction = min(done / total, 1.0) if total else 0.0
    filled = round(width * fraction)
    percent = f"{fraction:4.0%}" if total else "   ?"
    return f"[$accent]{'━' * filled}[/][$text-muted]{'─' * (width - filled)}[/]{percent}"


class DashboardScreen(Screen[None]):
    # The footer shows only the keys that do something in the run's state (RunState.commands):
    # "p" reads "pause" while training and "resume" while paused.
    BINDINGS = [
        Binding("p", "pause", "pause"),
        Binding("p", "resume", "resume"),
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
        self.run: Any = None  # engine.train.run.Run when the run lives in this process
        self.run_dir = run_dir
        self.watch = watch
        self.name_hint = title
        self.run_state = RunState()  # every header, footer and gate decision reads this
        self.started: RunStarted | None = None
        self.last_step: Step | None = None
        self.progress: Progress | None = None  # of an evaluation, while one runs
        self.event_span: tuple[float, float] | None = None  # first and newest event times
        self.progress_ended = 0.0  # time of the last step or state change, which ends one
        self.exact: dict[str, ExactMatch] = {}
        self.preference: dict[str, PreferenceAccuracy] = {}
        self.failure: Failed | None = None
        self.quitting = False
        self.chat_gate: threading.Event | None = None
        self.resume_after_chat = False
        self._bindings_state: tuple[bool, frozenset[str]] | None = None

    @property
    def state(self) -> str:
        return self.run_state.state

    @property
    def terminal(self) -> bool:
        return self.run_state.terminal

    @property
    def model_free(self) -> bool:
        """The engine is not using the model (paused or ended): chat may use it."""
        return self.run_state.paused or self.run_state.terminal

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
        # Before the first step (loading, evaluating) the hardware samples, every 2 s, move the
        # elapsed clock: the header never sits still while the model loads.
        if kinds - {HardwareSample, LogLine, Eval, CheckpointSaved} or self.last_step is None:
            self._paint_header()
        if kinds & {ExactMatch, PreferenceAccuracy}:
            self._paint_results()
        if self.chat_gate is not None and self.model_free:
            self.chat_gate.set()
        self._refresh_keys()
        if self.terminal and self.quitting:
            self.app.exit()
        elif self.state == runstate.FAILED and any(isinstance(e, Failed) for e in events):
            self._show_failure()  # not for a failed segment that a later resume replaced

    def _refresh_keys(self) -> None:
        # The footer rebuilds all its keys on refresh_bindings: only when their state can change.
        enabled = (self.control is not None, self.run_state.commands())
        if enabled != self._bindings_state:
            self._bindings_state = enabled
            self.refresh_bindings()

    def apply(self, event: Event, chart: LossChart, log: LogTail) -> None:
        resumes = len(self.run_state.resumes)
        self.run_state.apply(event)
        log.add_event(event)
        first, newest = self.event_span or (event.time, event.time)
        self.event_span = (first, max(event.time, newest))
        # An evaluation's count replaces the steps' for now. The bridge hands a drain's gauges
        # over after its series events, so a count sent before the step or state change that
        # ended it can arrive after them: such a count is over already.
        if isinstance(event, Progress):
            if event.time > self.progress_ended:
                self.progress = event
        elif isinstance(event, (Step, Finished, Failed)) or event.type == "state":
            self.progress = None
            self.progress_ended = max(self.progress_ended, event.time)
        if isinstance(event, Step):
            self.last_step = event
            chart.add_step(event.step, event.loss, event.learning_rate)
            self.query_one(ThroughputPanel).add_step(event)
            if event.metrics:  # a preference step: its margin and accuracy beside the loss
                chart.border_title = f"loss · lr · {preference_text(event.metrics)}"
        elif isinstance(event, Eval):
            chart.add_eval(event.step, event.loss)
        elif isinstance(event, HardwareSample):
            self.query_one(HardwarePanel).add_sample(event)
        elif isinstance(event, RunStarted):
            self.started = event
            self.run_dir = self.run_dir or Path(event.run_dir)
            if len(self.run_state.resumes) > resumes:  # a later segment of this run
                chart.add_resume(event.resumed_from_step)
                self.last_step = None  # progress restarts from the resumed step
        elif isinstance(event, DatasetStats):
            log.write_line(
                f"dataset {event.source}: {event.train_rows} train / {event.val_rows} val rows, "
                f"{event.tokens:,} tokens, {lengths_phrase(event)}",
                at=event.time,
            )
        elif isinstance(event, ExactMatch):
            self.exact[event.stage] = event
            log.write_line(f"exact match {event.stage}: {event.accuracy:.0%}", at=event.time)
        elif isinstance(event, PreferenceAccuracy):  # its log line is human_line's
            self.preference[event.stage] = event
        elif isinstance(event, CheckpointSaved) and event.reason == "requested":
            self.notify(f"Checkpoint saved at step {event.step}.")
        elif event.type == "alarm":  # run-health warnings (grad spikes, rising eval loss)
            self.notify(getattr(event, "message", ""), title="run health", severity="warning")
        elif isinstance(event, Finished):
            self.notify(f"Run {event.status} at step {event.step}.", timeout=6)
        elif isinstance(event, Failed):
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
        if self.progress is not None:
            bar = progress_bar(self.progress.total, self.progress.done)
            self.query_one("#progress", Static).update(bar, layout=False)
            label = self.query_one("#progress-label", Static)
            label.update(progress_line(self.progress), layout=False)
            return
        self.query_one("#progress", Static).update(progress_bar(total, done), layout=False)
        epoch = f"epoch {step.epoch:.2f} · " if step else ""
        self.query_one("#progress-label", Static).update(
            f"step {done}/{total or '?'} · {epoch}ETA {duration(step.eta_s if step else None)}"
            f" · elapsed {duration(step.elapsed_s if step else self._elapsed())}",
            layout=False,
        )

    def _elapsed(self) -> float | None:
        """Seconds from the run's first event to its newest: the clock before the first step."""
        return self.event_span[1] - self.event_span[0] if self.event_span else None

    def _paint_results(self) -> None:
        """Held-out scores before → after: exact match, and a preference run's accuracy."""
        rows = [
            (label, scores)
            for label, scores in (("pairs", self.preference), ("exact", self.exact))
            if scores
        ]
        if not rows:
            return
        lines = [
            (f"{label} " if self.preference else "")
            + " → ".join(
                f"{e.stage} [b]{e.accuracy:.0%}[/] ({e.correct}/{e.total})"
                for e in (scores.get("before"), scores.get("after"))
                if e
            )
            for label, scores in rows
        ]
        results = self.query_one("#results", Static)
        if self.preference:
            results.border_title = "held-out"
        results.update("\n".join(lines))
        results.display = True

    # -- keys ----------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # False keeps the key out of the footer: it would do nothing in this state.
        commands = self.run_state.commands() if self.control is not None else frozenset()
        return action not in ("pause", "resume", "save", "stop") or action in commands

    def action_pause(self) -> None:
        if self.control is not None:
            self.control.pause()
            self.notify("Pausing at the end of this step.")

    def action_resume(self) -> None:
        if self.control is not None:
            self.control.resume()
            self.notify("Resuming.")

    def action_save(self) -> None:
        if self.control is not None:
            self.control.save()
            when = "now" if self.run_state.paused else "at the end of this step"
            self.notify(f"Saving a checkpoint {when}.")

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

    def _leave(self) -> None:
        """Close this dashboard: back to the home screen when opened from it, else exit."""
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.exit()

    def request_quit(self) -> None:
        """Leaving a live run asks: leave it going, stop it with a checkpoint, or cancel."""
        from tui.screens.confirm import ConfirmScreen
        from tui.screens.quit_run import CANCEL, DETACH, QuitRunScreen

        control = self.control
        if control is None or self.terminal:
            self._leave()
            return
        if self.quitting:

            def abort(yes: bool | None) -> None:
                if yes:
                    control.abort()
                    self.app.exit()

            question = "Still saving the checkpoint. Abort now, without a checkpoint?"
            self.app.push_screen(ConfirmScreen(question, yes="Abort"), abort)
            return
        trained = self.last_step is not None or self.run_state.step > 0
        where = f"`finetty watch {self.run_dir}`" if self.run_dir else "`finetty watch latest`"
        if self.watch:
            detach = f"Close this view; the run goes on in its own process ({where} comes back)."
        else:
            detach = (
                f"Close the dashboard; training goes on in this process ({where} shows it "
                "again, Ctrl+C stops it with a checkpoint)."
            )
        stop = (
            "Stop the run: write a checkpoint, then end it."
            if trained
            else "Stop the run now: training has not started, so there is nothing to save."
        )

        def answered(choice: str | None) -> None:
            if choice in (None, CANCEL):
                return
            if choice == DETACH or not trained:
                if choice == DETACH:
                    self.app.detached = True  # type: ignore[attr-defined]  # run_tui reads it
                else:
                    control.abort()
                if self.watch:
                    self._leave()
                else:
                    self.app.exit()
            elif self.watch:
                control.stop()
                self.notify("Stopping: the run writes a checkpoint, then ends.", timeout=6)
            else:
                self.quitting = True
                control.stop()
                self.notify("Stopping: saving a checkpoint, then quitting.", timeout=10)

        self.app.push_screen(
            QuitRunScreen(question="The run is live.", detach_text=detach, stop_text=stop),
            answered,
        )

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
            if "pause" in self.run_state.commands() and self.control is not None:
                self.control.pause()
                self.resume_after_chat = True
            if self.model_free:
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
        elif self.watch or self.run is None:
            # The model being trained lives in the training process; this one can only open
            # the final model, which is written when the run finishes.
            self.notify(
                f"This run is {self.state}: chat here opens its final model, written when the "
                "run finishes. In the training process's own dashboard, c chats with it now."
            )
            return
        else:
            self.notify("Chat needs the model: wait until it has loaded.")
            return
        self.app.push_screen(screen, self._chat_closed)

    def _chat_closed(self, _: object = None) -> None:
        self.chat_gate = None
        if self.resume_after_chat and self.control is not None and not self.terminal:
            self.control.resume()
        self.resume_after_chat = False

"""The headless reporter for ``finetty train --no-tui``.

Progress goes to stderr: a rich live view on a TTY, plain log lines otherwise (nohup, CI).
Results go to stdout. ``--json`` prints every event as one JSON line on stdout instead.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from engine.core.events import (
    DatasetStats,
    Event,
    ExactMatch,
    Failed,
    Finished,
    HardwareSample,
    LogLine,
    Progress,
    RunStarted,
    StateChanged,
    Step,
)
from engine.core.units import duration
from engine.runs.rundir import human_line, preference_text
from engine.runs.runstate import RunState

format_duration = duration  # tui.screens.export's name for it


def reward_text(metrics: dict[str, float]) -> str:
    """``reward 0.375``: a GRPO step's mean reward, shown beside its loss; "" for other tasks."""
    return f"reward {metrics['reward']:.3f}" if "reward" in metrics else ""


def progress_line(event: Progress) -> str:
    """``exact match before training: 12/42 examples, ETA 8s, elapsed 4s``."""
    return (
        f"{event.task}: {event.done:.0f}/{event.total} {event.unit}, "
        f"ETA {duration(event.eta_s)}, elapsed {duration(event.elapsed_s)}"
    )


def exact_match_line(event: ExactMatch) -> str:
    tasks = ", ".join(f"{task} {c}/{t}" for task, (c, t) in event.by_task.items())
    return f"exact match {event.stage} training: {event.accuracy:.0%} ({event.correct}/{event.total}; {tasks})"


class ConsoleReporter:
    """An EventSink that renders events for a terminal or a log file."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        live: bool | None = None,
        stdout: TextIO | None = None,
        failure_panel: bool = False,
    ) -> None:
        """``failure_panel``: the caller prints a failure as an error panel of its own
        (`finetty train --no-tui`), so the reporter does not state it a second time."""
        self.stdout = stdout or sys.stdout
        self.failure_panel = failure_panel
        self.json_mode = json_mode
        self.err = Console(stderr=True, highlight=False)
        self.live_mode = self.err.is_terminal if live is None else live
        self._lock = threading.Lock()
        self._live: Live | None = None
        self.started: RunStarted | None = None
        self.last_step: Step | None = None
        self.hardware: HardwareSample | None = None
        self.run_state = RunState()  # engine.runs.runstate: the one place events become a state
        self.log: deque[str] = deque(maxlen=6)
        self.before: ExactMatch | None = None
        self.after: ExactMatch | None = None
        self.finished: Finished | None = None
        self.failed: Failed | None = None
        self.progress: Progress | None = None
        self._progress_printed: float | None = None
        self.event_span: tuple[float, float] | None = None  # first and newest event times

    def __enter__(self) -> ConsoleReporter:
        if self.live_mode:
            self._live = Live(self, console=self.err, refresh_per_second=4, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- EventSink -----------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        with self._lock:
            self._record(event)
        if self.json_mode:
            self.stdout.write(event.to_json() + "\n")
            self.stdout.flush()
        if isinstance(event, Progress) and not self.live_mode:
            self._print_progress(event)
        elif self.failure_panel and isinstance(event, Failed):
            return
        elif not self.live_mode and not isinstance(event, HardwareSample):
            line = exact_match_line(event) if isinstance(event, ExactMatch) else human_line(event)
            if isinstance(event, DatasetStats):
                line = _dataset_line(event)
            if line and isinstance(event, Step) and reward_text(event.metrics):
                loss = f"loss {event.loss:.4f} "
                line = line.replace(loss, f"{loss}{reward_text(event.metrics)} ", 1)
            if line:
                self.err.print(line, markup=False, highlight=False, soft_wrap=True)

    def _print_progress(self, event: Progress) -> None:
        """A plain line every 2 s at most (and the last one): logs stay short, yet move."""
        last = self._progress_printed
        if event.done < event.total and last is not None and event.time - last < 2.0:
            return
        self._progress_printed = event.time
        self.err.print(progress_line(event), markup=False, highlight=False, soft_wrap=True)

    def _record(self, event: Event) -> None:
        self.run_state.apply(event)
        first, newest = self.event_span or (event.time, event.time)
        self.event_span = (first, max(event.time, newest))
        if isinstance(event, Progress):
            self.progress = event
        elif isinstance(event, StateChanged | Step):
            self.progress = None  # the task that reported progress is over
        if isinstance(event, RunStarted):
            self.started = event
        elif isinstance(event, Step):
            self.last_step = event
        elif isinstance(event, HardwareSample):
            self.hardware = event
        elif isinstance(event, ExactMatch):
            setattr(self, event.stage, event)
            self.log.append(exact_match_line(event))
        elif isinstance(event, Finished):
            self.finished = event
        elif isinstance(event, Failed):
            self.failed = event
        elif isinstance(event, DatasetStats):
            self.log.append(_dataset_line(event))
        shown_by_caller = self.failure_panel and isinstance(event, Failed)
        if (isinstance(event, LogLine | Failed) and not shown_by_caller) or type(
            event
        ).__name__ in (
            "CheckpointSaved",
            "Eval",
            "PreferenceAccuracy",
        ):
            line = human_line(event)
            if line:
                self.log.append(line)

    # -- rich live view ------------------------------------------------------------------------
    def __rich__(self) -> Group:
        with self._lock:
            return self._render()

    def _render(self) -> Group:
        step = self.last_step
        title = Text("finetty ", style="bold")
        if self.started:
            title.append(
                f"{self.started.name} · {self.started.model.get('name')} · {self.started.device}"
            )
        state, detail = self.run_state.state, self.run_state.detail
        parts: list = [title, Text(f"state: {state}" + (f" ({detail})" if detail else ""))]
        total = (step.total_steps if step else self.started.total_steps if self.started else 0) or 1
        done = step.step if step else (self.started.resumed_from_step if self.started else 0)
        bar = Table.grid(padding=(0, 1))
        if self.progress is not None:  # an evaluation: its own count, not the steps
            p = self.progress
            bar.add_row(
                ProgressBar(total=p.total, completed=p.done, width=40), Text(progress_line(p))
            )
        else:
            bar.add_row(
                ProgressBar(total=total, completed=done, width=40),
                Text(
                    f"step {done}/{total}  ETA {duration(step.eta_s if step else None)}"
                    + ("" if step else f"  elapsed {duration(self._elapsed())}")
                ),
            )
        parts.append(bar)
        if step:
            preference = preference_text(step.metrics)
            reward = reward_text(step.metrics)
            parts.append(
                Text(
                    f"loss {step.loss:.4f}  "
                    + (f"{reward}  " if reward else "")
                    + (f"{preference}  " if preference else "")
                    + f"lr {step.learning_rate:.2e}  {step.tokens_per_s:,.0f} tok/s  "
                    f"{step.step_time_s:.2f} s/step  epoch {step.epoch:.2f}  elapsed {duration(step.elapsed_s)}"
                )
            )
        if self.hardware:
            hw = self.hardware
            text = f"RAM {hw.process_rss_mib / 1024:.1f} GiB  CPU {hw.process_cpu_pct:.0f}%"
            for gpu in hw.gpus:
                text += f"  GPU{gpu.index} {gpu.memory_used_mib / 1024:.1f}/{gpu.memory_total_mib / 1024:.0f} GiB"
                if gpu.utilization_pct is not None:
                    text += f" {gpu.utilization_pct:.0f}%"
            parts.append(Text(text))
        for line in self.log:
            parts.append(Text(line, style="dim", overflow="ellipsis", no_wrap=True))
        return Group(*parts)

    def _elapsed(self) -> float | None:
        """Seconds from the run's first event to its newest (hardware samples come every 2 s):
        the clock that moves while the model loads, before any step."""
        return self.event_span[1] - self.event_span[0] if self.event_span else None

    # -- results on stdout ---------------------------------------------------------------------
    def print_result(self) -> None:
        if self.json_mode:
            return
        out = self.stdout
        if self.finished:
            out.write(f"{self.finished.status} at step {self.finished.step}\n")
            for key, value in self.finished.metrics.items():
                out.write(
                    f"{key}: {value:.4g}\n" if isinstance(value, float) else f"{key}: {value}\n"
                )
            for key, value in self.finished.paths.items():
                out.write(f"{key}: {value}\n")
        for event in (self.before, self.after):
            if event:
                out.write(exact_match_line(event) + "\n")
        out.flush()


def _dataset_line(event: DatasetStats) -> str:
    return (
        f"dataset {event.source}: {event.format}, {event.train_rows} train / {event.val_rows} val rows, "
        f"{event.tokens:,} tokens ({event.trained_tokens:,} trained), mean length {event.mean_length:.0f}, "
        + lengths_phrase(event)
    )


def lengths_phrase(event: DatasetStats) -> str:
    """``longest row 57 tokens, none truncated (max_seq_length 256)``: the longest row is not a
    limit, so it is never written next to the truncated count as if it were one."""
    limit = f"max_seq_length {event.max_seq_length}" if event.max_seq_length else "max_seq_length"
    if not event.truncated:
        return f"longest row {event.max_length} tokens, none truncated ({limit})"
    rows = "row" if event.truncated == 1 else "rows"
    return f"longest row {event.max_length} tokens, {event.truncated} {rows} truncated to {limit}"

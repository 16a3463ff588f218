"""From engine threads to the UI: an EventSink that buffers events and wakes the UI at most a few
times a second, plus a tail of events.jsonl for `finetty watch` (every segment of a resumed run).

The engine thread only appends to a list under a lock and, at most once per drain, posts one
message; all rendering happens on the UI's own schedule. Series events (steps, evals) are kept
in order; gauge events (hardware samples) collapse to the newest of each type.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from textual.message_pump import MessagePump

from engine.core.events import Event, Failed
from engine.runs.runstate import TERMINAL, RunState, parse_event_line
from tui.messages import EventsReady


class UiBridge:
    """EventSink for the TUI. ``min_interval`` bounds how often the receiver redraws.

    The engine trains in this process, so every millisecond the UI thread holds the GIL is a
    millisecond a launch-bound training step waits. The interval therefore adapts: when the UI
    thread's CPU time since the last drain exceeds ``cpu_budget`` of the wall time, redraws
    space out (up to ``max_interval``); when it falls well under, they speed up again.
    Keys are handled as they come either way; only the panels' refresh rate changes.
    """

    def __init__(
        self, min_interval: float = 0.25, max_interval: float = 3.0, cpu_budget: float = 0.01
    ) -> None:
        self.base_interval = self.min_interval = min_interval
        self.max_interval, self.cpu_budget = max_interval, cpu_budget
        self._mark: tuple[float, float] | None = None  # (wall, UI-thread CPU) at the last drain
        self.clocks = (time.monotonic, time.thread_time)  # wall, this thread's CPU
        self._lock = threading.Lock()
        self._series: list[Event] = []
        self._gauges: dict[str, Event] = {}
        self._target: MessagePump | None = None
        self._notified = False
        self._last_drain = 0.0

    def connect(self, target: MessagePump) -> None:
        with self._lock:
            self._target = target
            pending = bool(self._series or self._gauges)
            self._notified = pending
        if pending:
            target.post_message(EventsReady())

    def emit(self, event: Event) -> None:
        with self._lock:
            if event.gauge:
                self._gauges[event.type] = event
            else:
                self._series.append(event)
            target = self._target if not self._notified else None
            if target is not None:
                self._notified = True
        if target is not None:
            target.post_message(EventsReady())

    def due_in(self) -> float:
        """Seconds to wait before the next drain keeps the redraw rate bounded."""
        return max(0.0, self._last_drain + self.min_interval - time.monotonic())

    def drain(self) -> list[Event]:
        with self._lock:
            events = self._series + sorted(self._gauges.values(), key=lambda e: e.time)
            self._series = []
            self._gauges = {}
            self._notified = False
            self._last_drain = time.monotonic()
        self._adapt()
        return events

    def _adapt(self) -> None:
        """Called on the UI thread: thread_time() is that thread's CPU time."""
        wall, cpu = self.clocks[0](), self.clocks[1]()
        if self._mark is not None and wall > self._mark[0]:
            # The UI's CPU time since the last drain is about one drain and its repaint: the
            # interval that keeps that within the budget follows at once, no slow ramp.
            needed = (cpu - self._mark[1]) / self.cpu_budget
            if needed < self.min_interval:  # come down gently: one cheap drain is not a trend
                needed = max(needed, self.min_interval * 0.8)
            self.min_interval = min(self.max_interval, max(self.base_interval, needed))
        self._mark = (wall, cpu)


class RunDirControl:
    """Commands to a run in another process, through its run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def _send(self, command: str) -> None:
        from engine.runs.rundir import send_command

        send_command(self.run_dir, command)

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def save(self) -> None:
        self._send("save")

    def stop(self) -> None:
        self._send("stop")

    def abort(self) -> None:
        self._send("abort")


class JsonlTail:
    """Replays events.jsonl from the start, then follows it until ``stop``.

    A resumed run is one run: a new process appends its segment to the same file after the last
    one's final event, so the tail goes on after a finished, stopped or failed segment.
    """

    def __init__(self, path: Path, sink: UiBridge, poll: float = 0.25) -> None:
        self.path = path
        self.sink = sink
        self.poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="finetty-tail", daemon=True)
        self.state = RunState()  # what the events say so far (every segment)
        #: Set whenever the run's latest segment has ended (cleared when another one begins).
        self.ended = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        offset = 0
        idle = 0
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                chunk = b""
            complete, newline, _ = chunk.rpartition(b"\n")
            idle = 0 if newline else idle + 1
            if idle and idle % 20 == 0 and not self.state.terminal:
                self._check_process()
            if newline:
                offset += len(complete) + 1
                for line in complete.split(b"\n"):
                    event = parse_event_line(line)
                    if event is None:
                        continue
                    self.state.apply(event)
                    self.sink.emit(event)
                if self.state.terminal:
                    self.ended.set()
                else:
                    self.ended.clear()
            self._stop.wait(self.poll)

    def _check_process(self) -> None:
        """A run whose process is gone without a final event would otherwise look alive."""
        from engine.runs.rundir import pid_alive, read_status

        status = read_status(self.path.parent)
        pid = status.get("pid")
        if not isinstance(pid, int) or pid <= 0 or pid_alive(pid):
            return
        if status.get("state") in TERMINAL:
            return  # its last event is on its way (status.json is written after events.jsonl)
        died = Failed(
            kind="died",
            title="The run's process is gone",
            message=f"Process {pid} ended without recording how the run finished.",
            hint=f"Resume it from its last checkpoint: finetty train --resume {self.path.parent}",
            step=self.state.step,
            log_path=str(self.path.parent / "log.txt"),
        )
        self.state.apply(died)
        self.sink.emit(died)
        self.ended.set()

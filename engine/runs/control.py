"""Commands from front-ends to a running training loop: pause, resume, save, stop, abort.

Thread-safe: the TUI, a signal handler and the run-directory poller all call ``request`` while the
loop drains the queue at step boundaries. ``abort`` is also visible between micro-batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from engine.runs.rundir import COMMANDS


class RunAborted(Exception):
    """Raised inside the loop when an abort was requested: no checkpoint, stop now."""


class RunControl:
    def __init__(self, external: Callable[[], list[str]] | None = None) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._external = external
        self.aborted = threading.Event()
        self.stop_requested = threading.Event()

    def request(self, command: str) -> None:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}; expected one of {COMMANDS}")
        if command == "abort":
            self.aborted.set()
        if command == "stop":
            self.stop_requested.set()
        self._queue.put(command)

    def pause(self) -> None:
        self.request("pause")

    def resume(self) -> None:
        self.request("resume")

    def save(self) -> None:
        self.request("save")

    def stop(self) -> None:
        self.request("stop")

    def abort(self) -> None:
        self.request("abort")

    def drain(self) -> list[str]:
        if self._external is not None:
            for command in self._external():
                self.request(command)
        commands = []
        while True:
            try:
                commands.append(self._queue.get_nowait())
            except queue.Empty:
                return commands

    def wait(self, timeout: float) -> list[str]:
        """Block up to ``timeout`` for the next command (used while paused)."""
        commands = self.drain()
        if commands:
            return commands
        try:
            return [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return self.drain()

    def check_abort(self) -> None:
        if self.aborted.is_set():
            raise RunAborted()

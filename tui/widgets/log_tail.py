"""The newest engine log lines (warnings and errors marked), scrollable when focused."""

from __future__ import annotations

import time

from textual.widgets import Log

from engine.events import Event
from engine.rundir import human_line

PREFIX = {"warning": "! ", "error": "!! "}


class LogTail(Log):
    DEFAULT_CSS = """
    LogTail { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=500, auto_scroll=True, **kwargs)  # type: ignore[arg-type]

    def add_event(self, event: Event, *, steps: bool = False) -> None:
        """Log lines and state changes; steps only when asked (they would bury everything else)."""
        if event.type == "step" and not steps:
            return
        line = human_line(event)
        if line is None:
            return
        level = getattr(event, "level", "error" if event.type == "failed" else "info")
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        self.write_line(f"{stamp} {PREFIX.get(level, '')}{line}")

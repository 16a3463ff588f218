"""The newest engine log lines (warnings and errors marked), wrapped, scrollable when focused."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

from engine.core.events import Event
from engine.runs.rundir import human_line

PREFIX = {"warning": "! ", "error": "!! "}


class LogTail(RichLog):
    DEFAULT_CSS = """
    LogTail { height: 1fr; overflow-x: hidden; scrollbar-size-vertical: 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        # RichLog wraps at min_width (78) when the log is narrower, then crops the lines to its
        # width: at 80 columns the dashboard's panel is 75 wide and a wrapped line lost the
        # characters in between. min_width 1 wraps at the panel's own width.
        super().__init__(max_lines=500, wrap=True, markup=False, min_width=1, **kwargs)  # type: ignore[arg-type]

    def write_line(self, line: str, *, level: str = "info", at: float | None = None) -> None:
        stamp = time.strftime("%H:%M:%S ", time.localtime(at if at is not None else time.time()))
        text = Text(stamp, style="dim")
        # Plain Text (never markup): paths and model output may hold brackets.
        text.append(PREFIX.get(level, "") + line, style="bold" if level != "info" else "")
        self.write(text)

    def add_event(self, event: Event, *, steps: bool = False) -> None:
        """Log lines and state changes; steps only when asked (they would bury everything else)."""
        if event.type == "step" and not steps:
            return
        line = human_line(event)
        if line is None:
            return
        level = getattr(event, "level", {"failed": "error", "alarm": "warning"}.get(event.type))
        level = level or "info"
        self.write_line(line, level=level, at=event.time)

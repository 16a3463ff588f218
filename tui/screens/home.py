"""The home screen: recent runs with their state, the bundled and user presets, and "New run".

Posts ``HomeScreen.NewRun()``, ``HomeScreen.OpenRun(run_dir)`` and ``HomeScreen.OpenPreset(path)``;
the app decides where each goes (dashboard, wizard, review).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Static

from engine.config.presets import list_presets
from engine.core import units
from engine.runs.rundir import all_runs, never_trained, read_status, runs_root
from engine.runs.runstate import LIVE_WORDS, shown_duration_s, shown_state

LIVE_STATES = LIVE_WORDS  # status.json words of a run whose process should be alive
STATE_STYLES = {
    "running": "bold $text-success", "starting": "$text-success", "paused": "$text-warning",
    "stopping": "$text-warning", "finished": "$text-primary", "failed": "bold $text-error",
    "died": "bold $text-error", "stopped": "$foreground-muted",
}  # fmt: skip
MAX_RUNS = 50
RUN_COLUMNS = (("started", 11), ("state", 8), ("step", 7), ("best loss", 9), ("time", 6))
CHROME = 8  # body padding, the focus bar and the scrollbar


def shown_path(path: Path) -> str:
    """A path as the user would type it here: relative below the current folder (the bundled
    presets from a checkout), absolute elsewhere."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_state(status: dict[str, Any]) -> str:
    """The state to show: a live state whose process is gone is "died" (engine.runs.runstate)."""
    return shown_state(status)


def duration(status: dict[str, Any]) -> str:
    seconds = shown_duration_s(status, time.time())
    return "–" if seconds is None else units.duration(seconds)


def run_row(run_dir: Path) -> tuple[str, str | Content, ...]:
    status = read_status(run_dir)
    state = run_state(status)
    best = status.get("best_loss")
    step, total = status.get("step"), status.get("total_steps")
    steps = (
        f"{step}/{total}" if step is not None and total else str(step if step is not None else "–")
    )
    stamp = run_dir.name
    started = (
        f"{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}" if len(stamp) >= 13 else stamp
    )
    return (
        str(status.get("name") or run_dir.parent.name),
        started,
        Content.styled(state, STATE_STYLES.get(state, "")),
        steps,
        f"{best:.4f}" if isinstance(best, int | float) else "–",
        duration(status),
    )


class HomeScreen(Screen):
    """Recent runs and presets. Enter opens the highlighted row; n starts the wizard."""

    DEFAULT_CSS = """
    HomeScreen { layout: vertical; }
    HomeScreen #home-title { height: 1; background: $panel; padding: 0 1; }
    HomeScreen #home-body { height: 1fr; padding: 0 1; }
    HomeScreen .home-heading { text-style: bold; color: $text-accent; margin: 1 0 0 0; }
    HomeScreen #home-actions { height: 1; margin: 1 0 0 0; }
    HomeScreen #home-actions Button { margin: 0 2 0 0; }
    HomeScreen #home-hint { color: $text-muted; width: 1fr; }
    HomeScreen DataTable { height: auto; max-height: 12; }
    HomeScreen DataTable:focus { border-left: outer $accent; }
    HomeScreen DataTable { border-left: outer $panel; }
    HomeScreen #no-runs { color: $text-muted; }
    HomeScreen #preset-detail { color: $text-muted; padding: 0 0 0 1; }
    """
    BINDINGS: ClassVar = [
        Binding("n", "new_run", "New run"),
        Binding("r", "refresh", "Refresh"),
    ]

    class NewRun(Message):
        """Start the new-run wizard."""

    class OpenRun(Message):
        """Open a run directory (dashboard, or watch it if another process runs it)."""

        def __init__(self, run_dir: Path) -> None:
            super().__init__()
            self.run_dir = run_dir

    class OpenPreset(Message):
        """Open a preset file on the review screen."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    def __init__(self, root: Path | None = None) -> None:
        super().__init__()
        self.root = root or runs_root()

    def compose(self) -> ComposeResult:
        yield Static("[b]finetty[/b]  fine-tune LLMs from the terminal", id="home-title")
        with VerticalScroll(id="home-body"):
            with Horizontal(id="home-actions"):
                yield Button("+ New run", id="new-run", variant="primary", compact=True)
                yield Static("enter opens · tab moves · n new run", id="home-hint")
            yield Static(f"Recent runs  ({self.root})", classes="home-heading", markup=False)
            yield Static("No runs yet: start one with New run or a preset.", id="no-runs")
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
            yield Static("Presets", classes="home-heading")
            yield DataTable(id="presets", cursor_type="row", zebra_stripes=True)
            yield Static("", id="preset-detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()
        self.set_interval(2.0, self.refresh_runs)  # live states and steps of running jobs
        self.query_one("#new-run", Button).focus()

    def action_refresh(self) -> None:
        self.refresh_runs()
        self.presets = list_presets()
        self.fill_presets()

    def on_resize(self) -> None:
        self.refresh_runs()
        self.fill_presets()

    def fill_presets(self) -> None:
        """Descriptions are cut to the width left; the highlighted one shows in full below."""
        table = self.query_one("#presets", DataTable)
        presets = getattr(self, "presets", [])
        name_width = max([len(info.name) for info in presets] + [6])
        room = max(10, self.size.width - name_width - 7 - 6 - CHROME)
        table.clear(columns=True)
        table.add_column("preset", width=name_width)
        table.add_column("from", width=7)
        table.add_column("description", width=room)
        for info in presets:
            text = info.description or ""
            text = text if len(text) <= room else text[: room - 1] + "…"
            table.add_row(info.name, info.origin, text, key=str(info.path))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "presets" and event.row_key.value is not None:
            info = next((p for p in self.presets if str(p.path) == event.row_key.value), None)
            detail = self.query_one("#preset-detail", Static)
            detail.update(f"{info.description}\n{shown_path(info.path)}" if info else "")

    def refresh_runs(self) -> None:
        table = self.query_one("#runs", DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        # Run names get the width the fixed columns leave (each column pads 2 cells).
        fixed = sum(width + 2 for _, width in RUN_COLUMNS)
        room = max(10, self.size.width - fixed - 2 - CHROME)
        table.add_column("run", width=room)
        for label, width in RUN_COLUMNS:
            table.add_column(label, width=width)
        # A run that ended before its first step (its error was shown then) is not listed.
        trained = (run for run in all_runs(self.root) if not never_trained(run))
        for run_dir in itertools.islice(trained, MAX_RUNS):
            name, *rest = run_row(run_dir)
            name = name if len(name) <= room else name[: room - 1] + "…"
            table.add_row(name, *rest, key=str(run_dir))
        table.display = table.row_count > 0
        self.query_one("#no-runs").display = table.row_count == 0
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        path = Path(str(event.row_key.value))
        if event.data_table.id == "runs":
            self.post_message(self.OpenRun(path))
        else:
            self.post_message(self.OpenPreset(path))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "new-run":
            self.action_new_run()

    def action_new_run(self) -> None:
        self.post_message(self.NewRun())

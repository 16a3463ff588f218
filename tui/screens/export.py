"""Export: for now only what exists, the trained adapter (final/), copied to a chosen folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def listing(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    rows = [
        f"  {human_size(p.stat().st_size):>10}  {escape(str(p.relative_to(folder)))}" for p in files
    ]
    return "\n".join([*rows, f"  [b]{human_size(total):>10}  total[/]"])


class ExportScreen(Screen[None]):
    BINDINGS = [Binding("escape", "back", "back")]

    def __init__(self, run_dir: Path | None) -> None:
        super().__init__(id="export")
        self.run_dir = run_dir
        self.final = run_dir / "final" if run_dir else None

    @property
    def ready(self) -> bool:
        return self.final is not None and self.final.is_dir()

    def compose(self) -> ComposeResult:
        yield Static("[b]export[/] · " + escape(str(self.run_dir or "no run")), id="export-title")
        with VerticalScroll(id="export-body"):
            if self.ready and self.final is not None:
                yield Static(f"[b]Adapter[/] in {escape(str(self.final))}", classes="section")
                yield Static(listing(self.final), id="files")
                with Horizontal(id="target-row"):
                    target = (self.run_dir or Path(".")) / "exports" / "adapter"
                    yield Input(str(target), id="target")
                    yield Button("Copy adapter", id="copy", variant="primary")
                yield Static(id="result")
            else:
                yield Static(
                    "Nothing to export yet: the adapter is written to final/ when the run "
                    "finishes. Come back then.",
                    id="not-ready",
                )
            yield Static(
                "[$text-muted]Merged and GGUF exports are not available yet.[/]", id="later"
            )
        yield Footer()

    def on_mount(self) -> None:
        if self.ready:
            self.query_one("#target").border_title = "copy to folder"
            self.query_one("#target", Input).focus()

    def on_input_submitted(self) -> None:
        self.copy()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "copy":
            self.copy()

    def copy(self) -> None:
        target = Path(self.query_one("#target", Input).value.strip()).expanduser()
        if target.exists() and any(target.iterdir()):
            self.query_one("#result", Static).update(
                f"[$error]{escape(str(target))} exists and is not empty: choose another folder.[/]"
            )
            return
        self.query_one("#copy", Button).disabled = True
        self.query_one("#result", Static).update("copying…")
        self.copy_worker(target)

    @work(thread=True, exclusive=True)
    def copy_worker(self, target: Path) -> None:
        assert self.final is not None  # noqa: S101 - the button exists only when final/ does
        try:
            shutil.copytree(self.final, target, dirs_exist_ok=True)
            text = f"[$success]✓ copied to {escape(str(target))}[/]\n{listing(target)}"
        except OSError as error:
            text = f"[$error]copy failed: {escape(str(error))}[/]"
        self.app.call_from_thread(self._copied, text)

    def _copied(self, text: str) -> None:
        self.query_one("#result", Static).update(text)
        self.query_one("#copy", Button).disabled = False

    def action_back(self) -> None:
        self.dismiss(None)

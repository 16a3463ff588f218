"""Scenes of the run screens (dashboard, help, chat) for the snapshot tests and screenshots/.

    python -m tests.tui.scenes.run_screens [OUT_DIR]

Each scene replays a recorded demo run (tests/data/demo_run*, see recorded.py) into the real
screens: the dashboard gets the events the engine wrote, up to a step for the live view or all of
them for the finished run, and the chat pane answers with the replies the run's base and tuned
models gave to the recorded prompts.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen

from engine.core.events import Event, RunStarted
from tests.tui.scenes.recorded import GPU_FIXTURE, live_until, recorded_chat, recorded_events
from tui.bridge import UiBridge

CSS = Path(__file__).resolve().parents[3] / "tui" / "app.tcss"
LIVE_STEP = 36  # the live dashboard: past half way, between the checkpoints at 20 and 40


class RecordingControl:
    """Stands in for RunControl: records the commands a screen sends."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[[], None]:
        if name not in ("pause", "resume", "save", "stop", "abort"):
            raise AttributeError(name)
        return lambda: self.calls.append(name)


class SceneApp(App[None]):
    """Hosts one screen with the real stylesheet."""

    CSS_PATH = CSS
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, make_screen: Callable[[], Screen]) -> None:
        super().__init__()
        self.make_screen = make_screen

    def on_mount(self) -> None:
        self.push_screen(self.make_screen())


def dashboard_scene(events: list[Event] | None = None, control: object | None = None) -> SceneApp:
    """The dashboard of a run that lives in this process, fed ``events`` (by default the
    recorded run as it was at step LIVE_STEP)."""
    from tui.screens.dashboard import DashboardScreen

    events = live_until(LIVE_STEP) if events is None else events
    bridge = UiBridge()
    for event in events:
        bridge.emit(event)
    name = next((e.name for e in events if isinstance(e, RunStarted)), "smollm2-demo")
    screen = lambda: DashboardScreen(bridge, control=control or RecordingControl(), title=name)
    return SceneApp(screen)


def finished_scene() -> SceneApp:
    """The dashboard when the recorded run had finished: every event it wrote."""
    return dashboard_scene(list(recorded_events()))


def gpu_scene() -> SceneApp:
    """The live dashboard of the same demo recorded on a GPU, at step LIVE_STEP."""
    return dashboard_scene(live_until(LIVE_STEP, GPU_FIXTURE))


def chat_scene(compare: bool = True) -> SceneApp:
    """The chat pane on the recorded run, answering with its recorded replies."""
    from tui.screens.chat import ChatScreen

    chat = recorded_chat()
    return SceneApp(
        lambda: ChatScreen(chat.reply_stream, description=chat.description, can_compare=compare)
    )


async def ask(pilot: Pilot, prompt: str | None = None, compare: bool = True) -> None:
    """Type ``prompt`` (by default the first recorded one) and wait for the replies."""
    if compare:
        await pilot.press("ctrl+b")
    await pilot.click("#prompt")
    for key in prompt if prompt is not None else recorded_chat().exchanges[0].prompt:
        await pilot.press(key if key != " " else "space")
    await pilot.press("enter")
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


_BRAILLE = re.compile("[\u2800-\u28ff]")


def svg_to_png(svg: str, path: Path) -> None:
    """PNG of a Textual SVG with the fonts this box has: the SVG asks for Fira Code (a web
    font), and a proportional fallback would squeeze the cells; DejaVu Sans Mono keeps the grid,
    and the plot's braille runs (which it lacks) take DejaVu Sans's."""
    import cairosvg

    svg = re.sub(
        r'font-family:\s*(?:"Fira Code"|Fira Code, monospace)', "font-family: DejaVu Sans Mono", svg
    )

    def braille(match: re.Match[str]) -> str:
        attrs, text = match.group(1), html.unescape(match.group(2))
        if not _BRAILLE.search(text):
            return match.group(0)
        # cairosvg ignores textLength, and DejaVu Sans's braille is wider than a cell: a long
        # run of plot dots would spill past the chart. One element per cell keeps the grid.
        x = float(re.search(r'\bx="([\d.]+)"', attrs).group(1))
        cell = float(re.search(r'textLength="([\d.]+)"', attrs).group(1)) / len(text)
        rest = re.sub(r'\s(?:x|textLength)="[^"]*"', "", attrs)
        return "".join(
            f'<text style="font-family: DejaVu Sans" x="{x + i * cell:.1f}"{rest}>{escape(char)}</text>'
            for i, char in enumerate(text)
            if not char.isspace() and char != "\u2800"  # blank cells draw nothing
        )

    svg = re.sub(r"<text( [^>]*)>([^<]*)</text>", braille, svg)
    cairosvg.svg2png(bytestring=svg.encode("utf-8"), write_to=str(path))


def scenes() -> list[tuple[str, Callable[[], SceneApp], Callable | None]]:
    """name, scene, what to do before the capture: the screenshots this module writes."""
    return [
        ("dashboard", dashboard_scene, None),
        ("dashboard-finished", finished_scene, None),
        ("dashboard-gpu", gpu_scene, None),
        ("chat", chat_scene, ask),
        ("help", dashboard_scene, lambda pilot: pilot.press("question_mark")),
    ]


async def main(out: Path) -> None:
    os.environ["TZ"] = "UTC"  # the log's clock times, the same on every box
    time.tzset()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name, make, before in scenes():
        app = make()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            if before is not None:
                await before(pilot)
            await pilot.pause(0.2)
            svg = app.export_screenshot(title=f"finetty · {name}")
        (out / f"{name}.svg").write_text(svg, encoding="utf-8")
        svg_to_png(svg, out / f"{name}.png")
        print(out / f"{name}.png")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots")))

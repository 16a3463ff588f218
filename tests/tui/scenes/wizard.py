"""Scenes of the home screen and the wizard at 80x24, shared by the snapshot tests and this script.

    python -m tests.tui.scenes.wizard [OUT_DIR]

writes screenshots/{home,wizard-*,review}.svg and .png. The wizard scenes open the bundled demo
preset with no user presets and a pinned GPU (an L4), so they look the same on every box; the
home scene lists the recorded demo run (tests/data/demo_run), its run directory rebuilt by the
engine's own RunDirSink from the recorded events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from textual.app import App
from textual.screen import Screen

from tests.tui.scenes.recorded import recorded_events
from tests.tui.scenes.run_screens import CSS, svg_to_png
from tui.screens.home import HomeScreen
from tui.screens.wizard_flow import step_screen
from tui.wizard_state import WizardState

SIZE = (80, 24)
SCENE_ROOT = Path(tempfile.gettempdir()) / "finetty-scenes"
FAKE_RUNS = (  # name, stamp, status
    ("smollm2-demo", "20261127-101500", {"state": "finished", "step": 60, "total_steps": 60,
     "best_loss": 0.1832, "elapsed_s": 312.0}),
    ("qwen2.5-0.5b-lora", "20261127-093000", {"state": "failed", "step": 12, "total_steps": 400,
     "best_loss": 1.9021, "elapsed_s": 95.0, "error": "CUDA out of memory"}),
    ("smollm2-demo", "20261126-180000", {"state": "running", "pid": 2**22 + 7, "step": 23,
     "total_steps": 60, "best_loss": 0.6120, "started": 1000.0, "updated": 1191.0}),
    ("llama-3.1-8b-qlora-finetome", "20261126-120000", {"state": "stopped", "step": 200,
     "total_steps": 625, "best_loss": 0.8714, "elapsed_s": 7380.0}),
)  # fmt: skip


def make_fake_runs(root: Path) -> Path:
    """A runs folder with one made-up run of each state (the running one's process is gone:
    "died"), for the home screen's behaviour tests; no screenshot shows them."""
    runs = root / "runs"
    for age, (name, stamp, status) in enumerate(FAKE_RUNS):
        run_dir = runs / name / stamp
        run_dir.mkdir(parents=True, exist_ok=True)
        # A run_started line: the home screen skips runs that never started training.
        started = {"type": "run_started", "v": 1, "name": name, "run_dir": str(run_dir)}
        (run_dir / "events.jsonl").write_text(json.dumps(started) + "\n", encoding="utf-8")
        (run_dir / "status.json").write_text(json.dumps({"name": name, **status}), encoding="utf-8")
        stamp_time = 1_800_000_000 - age * 3600  # newest first, whatever the clock says
        os.utime(run_dir / "events.jsonl", (stamp_time, stamp_time))
    return runs


def make_recorded_run(root: Path) -> Path:
    """root/runs holding only the recorded demo run, its events replayed through the engine's
    RunDirSink, so events.jsonl, log.txt and status.json are what the run itself wrote."""
    from engine.core.events import RunStarted
    from engine.runs.rundir import RunDirSink

    events = recorded_events()
    started = next(e for e in events if isinstance(e, RunStarted))
    root.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="runs-", dir=root))
    run_dir = fresh / started.name / Path(started.run_dir).name
    run_dir.mkdir(parents=True)
    sink = RunDirSink(run_dir)
    for event in events:
        sink.emit(event)
    sink.close()
    # Swap the whole folder in, so runs left by an older scene never show; renames keep a
    # concurrent test run from seeing a half-written folder.
    runs = root / "runs"
    with contextlib.suppress(FileNotFoundError):
        old = Path(tempfile.mkdtemp(prefix="old-", dir=root))
        runs.rename(old / "runs")
    try:
        fresh.rename(runs)
    except OSError:  # another process swapped in its own copy of the same run first
        shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return runs


class SceneApp(App):
    """A bare host app that shows one screen, like the oterm modal tests, styled like the real app."""

    CSS_PATH = str(CSS)

    def __init__(self, make_screen: Callable[[], Screen]) -> None:
        super().__init__()
        self.make_screen = make_screen
        self.posted: list[object] = []

    def on_mount(self) -> None:
        self.push_screen(self.make_screen())

    def on_home_screen_new_run(self, message: HomeScreen.NewRun) -> None:
        self.posted.append(message)
        self.push_screen(step_screen(0, WizardState()))

    def on_home_screen_open_preset(self, message: HomeScreen.OpenPreset) -> None:
        self.posted.append(message)
        self.push_screen(step_screen(4, WizardState.from_file(message.path)))

    def on_home_screen_open_run(self, message: HomeScreen.OpenRun) -> None:
        self.posted.append(message)

    def on_review_screen_launch(self, message: object) -> None:
        self.posted.append(message)

    def on_review_screen_probe(self, message: object) -> None:
        self.posted.append(message)


def isolate() -> Path:
    """The recorded run, an empty user presets folder and a fixed GPU (an L4), so scenes look
    the same on every box: the fit and the estimate otherwise depend on this machine's RAM."""
    from engine.plan.gpus import GPUS
    from tui import wizard_device

    os.environ["FINETTY_PRESETS"] = str(SCENE_ROOT / "user-presets")
    wizard_device.device_spec = lambda: GPUS["l4"]  # type: ignore[assignment]
    return make_recorded_run(SCENE_ROOT)


def scenes() -> dict[str, Callable[[], App]]:
    runs = isolate()
    demo = lambda: WizardState.from_file("smollm2-demo")
    return {
        "home": lambda: SceneApp(lambda: HomeScreen(runs)),
        "wizard-model": lambda: SceneApp(lambda: step_screen(0, demo())),
        "wizard-dataset": lambda: SceneApp(lambda: step_screen(1, demo())),
        "wizard-method": lambda: SceneApp(lambda: step_screen(2, demo())),
        "wizard-training": lambda: SceneApp(lambda: step_screen(3, demo())),
        "review": lambda: SceneApp(lambda: step_screen(4, demo())),
    }


async def settle(app: App) -> None:
    """Wait for the screen's workers (shape, estimate, tokenizer) and the repaint after them."""
    for _ in range(3):
        await app.workers.wait_for_complete()
        await asyncio.sleep(0.05)


async def scroll_to(app: App, selector: str) -> None:
    app.screen.query_one(selector).scroll_visible(animate=False, top=True)
    await asyncio.sleep(0.05)


SCROLL = {"wizard-dataset": "#dataset-preview"}


async def capture(name: str, make: Callable[[], App], out: Path) -> None:
    app = make()
    async with app.run_test(size=SIZE) as pilot:
        await settle(app)
        if name in SCROLL:
            await scroll_to(app, SCROLL[name])
        await pilot.pause()
        svg = app.export_screenshot(title=f"finetty · {name}")
    (out / f"{name}.svg").write_text(svg, encoding="utf-8")
    svg_to_png(svg, out / f"{name}.png")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, make in scenes().items():
        asyncio.run(capture(name, make, out))
        print(out / f"{name}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots"))

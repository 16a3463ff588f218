"""Scripted scenes for the snapshot tests and for screenshots/ (SVG + PNG).

    python -m tui.screenshots [OUT_DIR]

The scenes feed real engine event objects to the real screens, with deterministic values, so the
snapshot tests and the README's pictures show the same thing.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen

from engine.events import (
    CheckpointSaved,
    DatasetStats,
    Eval,
    Event,
    ExactMatch,
    GpuSample,
    HardwareSample,
    LogLine,
    RunStarted,
    StateChanged,
    Step,
)
from tui.bridge import UiBridge

T0 = 1_790_000_000.0
RUN_DIR = Path("runs/smollm2-demo/20261127-120000")
CSS = Path(__file__).with_name("app.tcss")


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


def run_started(total_steps: int = 60, device: str = "cpu") -> RunStarted:
    return RunStarted(
        run_dir=str(RUN_DIR),
        name="smollm2-demo",
        config={},
        model={"name": "SmolLM2-135M-Instruct", "architecture": "LlamaForCausalLM"},
        total_params=134_515_008,
        trainable_params=4_884_480,
        trainable_percent=3.63,
        total_steps=total_steps,
        num_epochs=1.0,
        global_batch_size=8,
        device=device,
        time=T0,
    )


def step(n: int, total: int = 60) -> Step:
    loss = 2.6 * math.exp(-n / 14) + 0.35 + 0.12 * math.sin(n * 1.7)
    lr = 3e-4 * min(1.0, n / 5) * (1 - n / total)
    return Step(
        step=n,
        total_steps=total,
        epoch=n / total,
        loss=loss,
        learning_rate=lr,
        grad_norm=1.2,
        tokens_per_s=118 + 6 * math.sin(n),
        samples_per_s=2.4 + 0.1 * math.sin(n),
        step_time_s=3.3 - 0.1 * math.sin(n),
        tokens=400,
        trained_tokens=120,
        elapsed_s=3.3 * n,
        eta_s=3.3 * (total - n),
        time=T0 + 30 + 3.3 * n,
    )


def hardware(gpus: int = 0, used: float = 30_000.0) -> HardwareSample:
    samples = [
        GpuSample(i, "NVIDIA H100 80GB HBM3", used + 900 * i, 81_559.0, used + 2000, 97, 64, 512)
        for i in range(gpus)
    ]
    return HardwareSample(samples, 3050.0, 187.0, 41.0, time=T0 + 150)


def demo_events(steps: int = 36, gpus: int = 0) -> list[Event]:
    """A CPU demo run a little past half way, in the order the engine emits it."""
    t = T0 + 1
    events: list[Event] = [
        StateChanged(state="loading", detail="model embedded:smollm2-135m-instruct", time=t),
        LogLine(level="info", text="Dataset format detected: messages.", time=t + 20),
        DatasetStats(
            source="builtin:tasks",
            format="messages",
            rows=400,
            train_rows=380,
            val_rows=20,
            tokens=19_200,
            trained_tokens=5_100,
            max_length=256,
            truncated=0,
            mean_length=48.0,
            length_histogram=[[32, 120], [64, 280]],
            time=t + 21,
        ),
        run_started(device="cuda" if gpus else "cpu"),
        ExactMatch("before", 0.08, 2, 25, {"reverse": [1, 10]}, [], time=t + 25),
        StateChanged(state="training", time=t + 28),
    ]
    for n in range(1, steps + 1):
        events.append(step(n))
        if n % 12 == 0:
            events.append(Eval(step=n, loss=step(n).loss + 0.08, perplexity=2.0, time=step(n).time))
        if n == 30:
            path = f"{RUN_DIR}/checkpoints/checkpoint-30"
            events.append(CheckpointSaved(30, path, "periodic", 0.4, time=step(n).time))
    events.append(hardware(gpus))
    return events


def dashboard_scene(events: list[Event] | None = None, control: object | None = None) -> SceneApp:
    from tui.screens.dashboard import DashboardScreen

    bridge = UiBridge()
    for event in demo_events() if events is None else events:
        bridge.emit(event)
    screen = lambda: DashboardScreen(
        bridge, control=control or RecordingControl(), title="smollm2-demo"
    )
    return SceneApp(screen)


def scripted_stream(words: list[str]) -> Callable[..., Iterator[str]]:
    def reply(messages: list[dict[str, str]], settings: object, variant: str) -> Iterator[str]:
        prefix = [] if variant == "tuned" else ["(base)", " "]
        yield from prefix + words

    return reply


CHAT_WORDS = ["Reversed", ":", " ", "`", "olleh", "`", ".", " Each letter in turn", ", last first."]


def chat_scene(compare: bool = True) -> SceneApp:
    from tui.screens.chat import ChatScreen

    return SceneApp(
        lambda: ChatScreen(
            scripted_stream(CHAT_WORDS), description="smollm2-demo (in memory)", can_compare=compare
        )
    )


async def ask(pilot: Pilot, prompt: str = "Reverse the word: hello", compare: bool = True) -> None:
    if compare:
        await pilot.press("ctrl+b")
    await pilot.click("#prompt")
    for key in prompt:
        await pilot.press(key if key != " " else "space")
    await pilot.press("enter")
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def make_run_dir(root: Path) -> Path:
    """A finished-looking run directory (relative to root) with an adapter in final/."""
    final = root / RUN_DIR / "final"
    final.mkdir(parents=True, exist_ok=True)
    (final / "adapter_config.json").write_text('{"r": 16, "lora_alpha": 16}\n')
    (final / "adapter_model.safetensors").write_bytes(b"\0" * 19_546_112)
    (final / "tokenizer.json").write_bytes(b"{}" + b" " * 3_522_000)
    (root / RUN_DIR / "events.jsonl").write_text("")
    return RUN_DIR


def scripted_export(run: Path, formats: list[str], *, progress: Callable, **options: object):
    """Stands in for export_run: the report a GGUF q8_0 + Modelfile export of the demo gives."""
    from engine.export import Exported, ExportReport

    out = Path(str(options["out"]))
    progress("GGUF q8_0: writing smollm2-demo-q8_0.gguf", 0.5)
    gguf = out / "smollm2-demo-q8_0.gguf"
    modelfile = out / "smollm2-demo-q8_0.Modelfile"
    checks = [
        "GGUF q8_0 read back by transformers: ok, max |Δlogit| 1.6120 (tolerance 3.0), "
        "top-1 agreement 99.2%, same greedy continuation",
        "llama.cpp: loads, same prompt tokens, generated 8 tokens (8/8 equal to the HF greedy "
        "continuation)",
    ]
    return ExportReport(run, out, [
        Exported("gguf", gguf, 144_811_200, checks),
        Exported("modelfile", modelfile, 612, ["chat format chatml"],
                 f"ollama create smollm2-demo:q8_0 -f {modelfile}"),
    ])  # fmt: skip


def export_scene() -> SceneApp:
    from tui.screens.export import ExportScreen

    return SceneApp(lambda: ExportScreen(RUN_DIR, exporter=scripted_export))


async def exported(pilot: Pilot) -> None:
    """Tick GGUF and the Modelfile (q8_0 is the default type), then press Export."""
    from textual.widgets import Checkbox

    for widget_id in ("fmt-adapter", "fmt-gguf", "ollama"):
        checkbox = pilot.app.screen.query_one(f"#{widget_id}", Checkbox)
        checkbox.focus()
        await pilot.press("space")
    await pilot.press("ctrl+s")
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
        text = match.group(0)
        if not _BRAILLE.search(text):
            return text
        return text.replace("<text ", '<text style="font-family: DejaVu Sans" ', 1)

    svg = re.sub(r"<text [^>]*>[^<]*</text>", braille, svg)
    cairosvg.svg2png(bytestring=svg.encode("utf-8"), write_to=str(path))


async def main(out: Path) -> None:

    os.environ["TZ"] = "UTC"
    time.tzset()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(tempfile.mkdtemp(prefix="finetty-shots-"))
    make_run_dir(Path.cwd())
    scenes: list[tuple[str, SceneApp, Callable | None]] = [
        ("dashboard", dashboard_scene(), None),
        ("dashboard-gpu", dashboard_scene(demo_events(gpus=1)), None),
        ("chat", chat_scene(), ask),
        ("export", export_scene(), exported),
        ("help", dashboard_scene(), lambda pilot: pilot.press("question_mark")),
    ]
    for name, app, before in scenes:
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

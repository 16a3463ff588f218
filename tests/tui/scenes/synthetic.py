"""Made-up events and a scripted exporter for behaviour tests of the run screens.

These feed real engine event objects to the real screens with deterministic values, so a test
can ask for "step 3 of 60 on two GPUs" without training anything. They are test doubles: no
screenshot uses them (screenshots/ replays the recorded run in tests/data/demo_run).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot

from engine.core.events import (
    CheckpointSaved,
    DatasetStats,
    Eval,
    Event,
    ExactMatch,
    GpuSample,
    HardwareSample,
    LogLine,
    PreferenceAccuracy,
    RunStarted,
    StateChanged,
    Step,
)
from tests.tui.scenes.run_screens import SceneApp

T0 = 1_790_000_000.0
RUN_DIR = Path("runs/smollm2-demo/20261127-120000")


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
    """A made-up CPU (or GPU) run ``steps`` steps in, in the order the engine emits events."""
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
            loss = step(n).loss + 0.08
            events.append(Eval(step=n, loss=loss, perplexity=math.exp(loss), time=step(n).time))
        if n == 30:
            path = f"{RUN_DIR}/checkpoints/checkpoint-30"
            events.append(CheckpointSaved(30, path, "periodic", 0.4, time=step(n).time))
    events.append(hardware(gpus))
    return events


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
    """Stands in for export_run: a made-up report of a GGUF q8_0 + Modelfile export."""
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
    return ExportReport(
        run,
        out,
        [
            Exported("gguf", gguf, 144_811_200, checks),
            Exported(
                "modelfile",
                modelfile,
                612,
                ["chat format chatml"],
                f"ollama create smollm2-demo:q8_0 -f {modelfile}",
            ),
        ],
    )


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


def dpo_events(steps: int = 20) -> list[Event]:
    """A made-up DPO run ``steps`` steps in: demo_events' steps carrying the preference metrics,
    and held-out preference accuracy before training."""
    events: list[Event] = []
    for event in demo_events(steps):
        if isinstance(event, Eval):
            continue  # SFT's eval losses; the scene's loss is DPO's
        if isinstance(event, Step):
            margin = 0.02 * event.step
            metrics = {
                "rewards/margins": margin,
                "rewards/accuracies": min(1.0, 0.4 + 0.03 * event.step),
                "rewards/chosen": margin / 2,
                "rewards/rejected": -margin / 2,
            }
            event = dataclasses.replace(event, loss=math.log(2) - margin / 2, metrics=metrics)
        elif isinstance(event, ExactMatch):
            event = PreferenceAccuracy("before", 0.33, 14, 42, time=event.time)
        elif isinstance(event, RunStarted):
            event = dataclasses.replace(event, task="DPO (sigmoid, beta 0.1) · LoRA")
        events.append(event)
    return events

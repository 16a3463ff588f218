"""Does the dashboard slow training? tokens/s of the same run headless and with the dashboard open.

    python bench/ui_overhead.py [--preset smollm2-demo] [--steps 12] [--rounds 1]

Each round trains the same preset twice, with the same seed, in this process:
- headless: a ``Run`` with the console reporter in plain mode (what ``--no-tui`` does off a TTY);
- dashboard: ``FinettyApp`` driven by ``App.run_test()`` (headless driver, so no terminal is
  needed; the screen is still laid out and rendered, only the terminal write is skipped).
The order alternates between rounds. tokens/s is the median of the Step events after the first,
read back from each run's events.jsonl. Prints one JSON line: tokens/s of each, the ratio
(dashboard / headless, 1.0 = no cost) and the machine load, since other work on the same cores
moves CPU figures far more than the UI does.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def steps_of(run_dir: Path) -> list[dict]:
    with open(run_dir / "events.jsonl", encoding="utf-8") as handle:
        events = [json.loads(line) for line in handle if line.strip()]
    return [event for event in events if event["type"] == "step"]


def steps_of_file(run_dir: Path) -> bool:
    """Whether training has started (a first step is in events.jsonl)."""
    try:
        return '"type":"step"' in (run_dir / "events.jsonl").read_text(encoding="utf-8")
    except OSError:
        return False


def figures(run_dir: Path) -> dict:
    steps = steps_of(run_dir)[1:]  # the first step pays for lazy initialisation
    if not steps:
        raise SystemExit(f"no steps recorded in {run_dir}")
    return {
        "tokens_per_s": statistics.median(s["tokens_per_s"] for s in steps),
        "step_s": statistics.median(s["step_time_s"] for s in steps),
        "steps": len(steps),
    }


def engine_cpu_s() -> float | None:
    """CPU seconds of the engine's training thread so far: unlike wall time, steal time and
    other tenants of the machine do not move it, so it shows whether the dashboard makes the
    training thread itself do more work."""
    import threading

    import psutil

    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    for thread in psutil.Process().threads():
        if names.get(thread.id) == "finetty-engine":
            return thread.user_time + thread.system_time
    return None


class EngineCpu:
    """Engine-thread CPU from the first recorded step to the end of the run."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.last: float | None = None

    def poll(self, run_dir: Path) -> None:
        reading = engine_cpu_s()
        if reading is None:
            return
        if self.start is None and steps_of_file(run_dir):
            self.start = reading
        self.last = reading

    @property
    def seconds(self) -> float:
        return (self.last or 0.0) - (self.start or 0.0)


def headless(preset, root: Path, engine: EngineCpu) -> Path:
    """What `finetty train --no-tui` does with stderr off a TTY: plain lines, joined at 0.2 s."""
    from engine.train.run import Run
    from tui.console import ConsoleReporter

    reporter = ConsoleReporter(live=False, stdout=io.StringIO())
    reporter.err.file = io.StringIO()  # the plain lines are rendered, then thrown away
    run = Run(preset, reporter, runs_root=root)
    with reporter:
        run.start()
        while run.alive:
            run.join(timeout=0.2)
            engine.poll(run.run_dir)
    if run.result is None or run.result.status != "finished":
        log = run.run_dir / "log.txt"
        trace = log.read_text(encoding="utf-8")[-4000:] if log.is_file() else ""
        raise SystemExit(f"headless run failed: {run.result and run.result.error}\n{trace}")
    return run.run_dir


async def dashboard(preset, root: Path, cpu: dict, engine: EngineCpu | None = None) -> Path:
    """The TUI's own path: FinettyApp pushes the dashboard and starts the Run on a worker.

    ``cpu`` receives the CPU seconds of the UI's thread (this one: the event loop) and of the
    whole process while the run trained: a load-independent view of what the UI costs.
    """
    from tui.app import FinettyApp

    app = FinettyApp(preset, runs_root=root)
    async with app.run_test(size=(80, 24)) as pilot:
        while app.run_handle is None and app.launch_error is None:
            await pilot.pause(0.1)
        run = app.run_handle
        if run is None:
            raise SystemExit(f"dashboard run failed to start: {app.launch_error}")
        while not run.alive and run.result is None:
            await pilot.pause(0.1)
        engine = engine or EngineCpu()
        while run.alive and not steps_of_file(run.run_dir):
            await pilot.pause(0.2)
            engine.poll(run.run_dir)
        ui0, all0 = time.thread_time(), time.process_time()
        while run.alive:
            # A plain sleep, not pilot.pause(): that forces a screen update and walks every
            # widget's queue on each call, a cost of the harness and not of the app.
            await asyncio.sleep(0.5)
            engine.poll(run.run_dir)
        cpu["ui_thread_s"] = time.thread_time() - ui0
        cpu["process_s"] = time.process_time() - all0
        await pilot.pause(0.3)  # let the last drain paint
    if run.result is None or run.result.status != "finished":
        log = run.run_dir / "log.txt"
        trace = log.read_text(encoding="utf-8")[-4000:] if log.is_file() else ""
        raise SystemExit(f"dashboard run failed: {run.result and run.result.error}\n{trace}")
    return run.run_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="smollm2-demo")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    from tui.quiet import quiet_libraries

    quiet_libraries()
    from engine.config.presets import load_preset

    overrides = [
        f"training.max_steps={args.steps}",
        "training.eval_exact_match=false",
        "training.save_steps=0",
    ]
    preset, _ = load_preset(args.preset, overrides)
    load_before = os.getloadavg()
    started = time.time()
    results: dict[str, list[dict]] = {"headless": [], "dashboard": []}
    cpu: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="finetty-ui-overhead-") as tmp:
        for round_ in range(args.rounds):
            order = ("headless", "dashboard") if round_ % 2 == 0 else ("dashboard", "headless")
            for mode in order:
                root = Path(tmp) / f"{mode}-{round_}"
                engine = EngineCpu()
                if mode == "headless":
                    run_dir = headless(preset, root, engine)
                else:
                    run_dir = asyncio.run(dashboard(preset, root, cpu, engine))
                steps = len(steps_of(run_dir))
                results[mode].append(
                    {**figures(run_dir), "engine_cpu_per_step": engine.seconds / max(steps - 1, 1)}
                )
                gc.collect()
    load_after = os.getloadavg()
    head = statistics.median(r["tokens_per_s"] for r in results["headless"])
    dash = statistics.median(r["tokens_per_s"] for r in results["dashboard"])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    commit = os.environ.get("FINETTY_COMMIT") or commit  # the device's .git copy is stale
    print(
        json.dumps(
            {
                "bench": "ui_overhead",
                "preset": args.preset,
                "steps": args.steps,
                "rounds": args.rounds,
                "headless_tokens_per_s": round(head, 1),
                "dashboard_tokens_per_s": round(dash, 1),
                "ratio": round(dash / head, 4),
                "headless_runs": [round(r["tokens_per_s"], 1) for r in results["headless"]],
                "dashboard_runs": [round(r["tokens_per_s"], 1) for r in results["dashboard"]],
                "headless_step_s": round(
                    statistics.median(r["step_s"] for r in results["headless"]), 3
                ),
                "dashboard_step_s": round(
                    statistics.median(r["step_s"] for r in results["dashboard"]), 3
                ),
                # Engine-thread CPU per step, headless / dashboard: 1.0 = the dashboard adds no
                # work to the training thread (robust to a noisy machine, unlike tokens/s).
                "engine_cpu_ratio": round(
                    statistics.median(r["engine_cpu_per_step"] for r in results["headless"])
                    / max(
                        statistics.median(r["engine_cpu_per_step"] for r in results["dashboard"]),
                        1e-9,
                    ),
                    4,
                ),
                "ui_thread_cpu_s": round(cpu.get("ui_thread_s", 0.0), 3),
                "process_cpu_s": round(cpu.get("process_s", 0.0), 1),
                "ui_cpu_share": round(
                    cpu.get("ui_thread_s", 0.0) / max(cpu.get("process_s", 0.0), 1e-9), 4
                ),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in load_after],
                "cores": os.cpu_count(),
                "wall_s": round(time.time() - started, 1),
                "commit": commit,
            }
        )
    )


if __name__ == "__main__":
    main()

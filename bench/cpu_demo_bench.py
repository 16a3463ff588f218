"""CPU throughput of the demo preset: steps/s and tokens/s of the real engine on the embedded model.

    python bench/cpu_demo_bench.py [--steps 10] [--preset smollm2-demo]

Prints one JSON line with the figures, the machine and the versions. Not a timed test: run it on a
quiet machine (other work on the same cores slows CPU training 3-6x) and paste the line into
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="smollm2-demo")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import torch
    import transformers

    from engine.config.presets import load_preset
    from engine.core.events import RecordingSink, RunStarted, Step
    from engine.train.run import Run

    overrides = [
        f"training.max_steps={args.steps}",
        "training.eval_exact_match=false",
        "training.save_steps=0",
    ]
    preset, _ = load_preset(args.preset, overrides)
    sink = RecordingSink()
    with tempfile.TemporaryDirectory() as runs:
        result = Run(preset, sink, runs_root=Path(runs)).execute()
    if result.status != "finished":
        raise SystemExit(f"benchmark run failed: {result.error}")
    steps = sink.of_type(Step)[1:]  # the first step pays for lazy initialisation
    started = sink.of_type(RunStarted)[0]
    step_time = statistics.median(s.step_time_s for s in steps)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        json.dumps(
            {
                "bench": "cpu_demo",
                "preset": args.preset,
                "steps_measured": len(steps),
                "median_step_s": round(step_time, 3),
                "steps_per_s": round(1 / step_time, 4),
                "tokens_per_s": round(statistics.median(s.tokens_per_s for s in steps), 1),
                "micro_batch": started.global_batch_size,
                "trainable_params": started.trainable_params,
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "commit": commit,
            }
        )
    )


if __name__ == "__main__":
    main()

"""`finetty estimate`: memory, time and cost of a preset without loading the model."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_estimate_parser(sub: Any) -> argparse.ArgumentParser:
    estimate = sub.add_parser("estimate", help="memory and time estimate without loading the model")
    estimate.add_argument("preset", help="preset file or name")
    estimate.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
    )
    estimate.add_argument(
        "--gpu", help="estimate for a named GPU (t4, l4, a100-40gb, h100-80gb, ...)"
    )
    estimate.add_argument(
        "--price", type=float, help="hourly price in dollars, for the cost estimate"
    )
    estimate.add_argument("--json", action="store_true", help="machine-readable output")
    return estimate


def cmd_estimate(args: argparse.Namespace) -> int:
    from engine.config.derived import uses_gpu
    from engine.config.presets import load_preset
    from engine.plan.estimate import estimate_for, format_estimate
    from engine.plan.gpus import detect_gpus, gpu_spec, spec_for

    preset, _ = load_preset(args.preset, args.overrides)
    if args.gpu:
        gpu = gpu_spec(args.gpu)
    else:
        detected = detect_gpus()
        gpu = spec_for(detected[0]) if uses_gpu(preset, gpu_present=bool(detected)) else None
    result = estimate_for(preset, gpu, args.price)
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2, default=str))
    else:
        print(format_estimate(result))
    return 0

"""`finetty doctor` and `finetty train --probe`: what is installed, what real steps measure."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tui.quiet import quiet_libraries


def add_doctor_parser(sub: Any) -> argparse.ArgumentParser:
    doctor = sub.add_parser("doctor", help="check GPU, CUDA, bitsandbytes, disk and hub access")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    return doctor


def cmd_doctor(args: argparse.Namespace) -> int:
    from engine.diagnose.doctor import checks_to_json, run_checks

    checks = run_checks()
    if args.json:
        print(json.dumps(checks_to_json(checks), indent=2))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "info": "info"}
        for check in checks:
            print(f"[{marks.get(check.status, check.status)}] {check.name}: {check.detail}")
            if check.fix and check.status in ("warn", "fail"):
                print(f"       fix: {check.fix}")
    return 1 if any(check.status == "fail" for check in checks) else 0


def run_probe(preset, *, root: Path, steps: int, price: float | None, json_mode: bool) -> int:
    """`finetty train PRESET --probe`: progress on stderr, the comparison (or JSON) on stdout."""
    quiet_libraries()
    from dataclasses import asdict

    from engine.diagnose.probe import format_probe, probe

    def progress(text: str) -> None:
        print(f"probe: {text}", file=sys.stderr, flush=True)

    result = probe(preset, steps, root, hourly_price=price, progress=progress)
    if json_mode:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(format_probe(result))
    return 0

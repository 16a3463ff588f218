"""`finetty runs` and `finetty watch`: the runs on disk, listed or followed live."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tui.cli import terminal


def add_watch_parser(sub: Any) -> argparse.ArgumentParser:
    watch = sub.add_parser("watch", help="live dashboard of a run started elsewhere")
    watch.add_argument("run", metavar="RUN_DIR|latest", help="a run directory, or `latest`")
    watch.add_argument("--run-dir", metavar="DIR", help="root folder for runs (for `latest`)")
    return watch


def add_runs_parser(sub: Any) -> argparse.ArgumentParser:
    runs = sub.add_parser("runs", help="list runs with status, best loss and duration")
    runs.add_argument("--run-dir", metavar="DIR", help="root folder for runs")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    return runs


def cmd_watch(args: argparse.Namespace) -> int:
    from engine.runs import rundir
    from tui.app import run_tui

    root = rundir.runs_root(args.run_dir)
    run_dir = rundir.resolve_run(args.run, root)
    terminal.require_terminal(
        f"`finetty watch` shows {run_dir}",
        f"Without a terminal: finetty runs --run-dir {root} for its state, "
        f"or tail -f {run_dir / 'log.txt'} for its log",
    )
    return run_tui(runs_root=root, watch_dir=run_dir)


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.core import units
    from engine.runs import rundir, runstate
    from engine.runs.runstate import shown_state

    rows = []
    for path in rundir.all_runs(rundir.runs_root(args.run_dir)):
        status = readable_status(rundir.read_status(path))
        state = shown_state(
            status
        )  # engine.runs.runstate: "died" for a live run whose process is gone
        rows.append(
            {
                "run_dir": str(path),
                "state": state,
                "phase": runstate.DIED if state == runstate.DIED else status.get("phase", state),
                "step": status.get("step", 0),
                "total_steps": status.get("total_steps"),
                "best_loss": status.get("best_loss"),
                "duration_s": runstate.shown_duration_s(status, time.time()),
                "error": status.get("error"),
                "last_checkpoint": status.get("last_checkpoint"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs yet: start one with `finetty train smollm2-demo`", file=sys.stderr)
    for row in rows:
        best = f"{row['best_loss']:.4f}" if row["best_loss"] is not None else "-"
        duration = units.duration(row["duration_s"]) if row["duration_s"] else "-"
        step = f"{row['step']}/{row['total_steps'] or '?'}"
        print(f"{row['state']:9} {step:>11} best {best:>8} {duration:>9}  {row['run_dir']}")
        if row["error"]:
            print(f"          error: {row['error']}")
        if row["last_checkpoint"] and row["state"] not in ("finished", "running", "paused"):
            print(f"          last checkpoint: {row['last_checkpoint']}")
    return 0


# status.json is a file anyone can edit: each field `finetty runs` shows, and its type.
STATUS_FIELDS = {
    "state": str,
    "phase": str,
    "pid": int,
    "step": int,
    "total_steps": int,
    "best_loss": float,
    "started": float,
    "updated": float,
    "elapsed_s": float,
    "error": str,
    "last_checkpoint": str,
}


def readable_status(status: object) -> dict[str, object]:
    """The fields of a status.json that have the type `finetty runs` expects; any other value
    (a string pid, a NaN loss, a list) is dropped, so that one damaged file cannot stop the list."""
    import math

    if not isinstance(status, dict):
        return {}
    clean: dict[str, object] = {}
    for key, kind in STATUS_FIELDS.items():
        value = status.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if (kind is str and isinstance(value, str)) or (
            kind is int and isinstance(value, int) and 0 <= value < 2**63
        ):
            clean[key] = value
        elif kind is float and isinstance(value, int | float) and math.isfinite(value):
            clean[key] = float(value)
    if not 0 < int(clean.get("pid", 0)) < 2**22:  # Linux's pid_max: anything else is no pid
        clean.pop("pid", None)
    return clean

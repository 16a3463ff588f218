"""`finetty export RUN_DIR|latest --format ...`: progress on stderr, what was written on stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

FORMATS = ("adapter", "merged", "gguf")


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a finished run: adapter, merged model, GGUF (+ Ollama Modelfile)",
        description="Export a finished run. Every file is verified by a round trip before it is "
        "reported; nothing is left under a finished-looking name when a check fails.",
    )
    parser.add_argument("run", metavar="RUN_DIR|latest", help="a run directory, or `latest`")
    parser.add_argument(
        "--format", dest="formats", action="append", required=True, choices=FORMATS,
        help="what to write (repeatable): adapter, merged (16-bit safetensors), gguf",
    )  # fmt: skip
    parser.add_argument(
        "--quant", dest="quants", action="append", metavar="TYPE",
        help="GGUF type (repeatable, comma lists too): f16, bf16, q8_0 (default), "
        "or via llama.cpp q4_k_m, q5_k_m, q6_k, q3_k_m, q2_k, ...",
    )  # fmt: skip
    parser.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/exports)")
    parser.add_argument("--ollama", action="store_true", help="write an Ollama Modelfile per GGUF")
    parser.add_argument("--force", action="store_true", help="replace existing export targets")
    parser.add_argument(
        "--dtype", choices=("bf16", "fp16"),
        help="merge precision (default bf16; fp16 when GGUF f16/q8_0/k-quants are asked for)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--run-dir", metavar="DIR", help="root folder for runs (for `latest`)")
    return parser


class StderrProgress:
    """One line per step on stderr; fractions update the same line on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""
        self.started = time.monotonic()

    def __call__(self, message: str, fraction: float | None = None) -> None:
        stamp = f"[{time.monotonic() - self.started:6.1f}s]"
        if fraction is not None and 0 < fraction < 1:
            if self.tty:
                sys.stderr.write(f"\r{stamp} {message} {fraction:.0%}\x1b[K")
                sys.stderr.flush()
            return
        if self.tty and self.last:
            sys.stderr.write("\r\x1b[K")
        sys.stderr.write(f"{stamp} {message}\n")
        sys.stderr.flush()
        self.last = message


def cmd_export(args: argparse.Namespace) -> int:
    from tui.cli import quiet_libraries

    quiet_libraries()
    from engine.export import export_run
    from engine.export.files import human_size

    quants = [q.strip().lower() for item in (args.quants or ["q8_0"]) for q in item.split(",")]
    report = export_run(
        args.run,
        list(dict.fromkeys(args.formats)),
        quants=[q for q in quants if q],
        out=Path(args.out) if args.out else None,
        ollama_files=args.ollama,
        force=args.force,
        dtype=args.dtype,
        runs_root=Path(args.run_dir) if args.run_dir else None,
        progress=StderrProgress(),
    )
    if args.json:
        print(json.dumps({"run_dir": str(report.run_dir), "out_dir": str(report.out_dir),
                          "items": [item.to_dict() for item in report.items]}, indent=2))  # fmt: skip
        return 0
    for item in report.items:
        print(f"{item.kind:9} {human_size(item.size):>10}  {item.path}")
        for check in item.checks:
            print(f"{'':21}{check}")
        if item.command:
            print(f"{'':21}run: {item.command}")
    return 0

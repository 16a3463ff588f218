"""`finetty export RUN_DIR|latest --format ... [--push REPO_ID]`: progress on stderr, what was
written (and where it was pushed) on stdout. With --push the hub is checked first (login,
network, rights, name free), so a push that cannot happen is refused before the export's work."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tui.quiet import quiet_libraries

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
        "--format",
        dest="formats",
        action="append",
        required=True,
        choices=FORMATS,
        help="what to write (repeatable): adapter, merged (16-bit safetensors), gguf",
    )
    parser.add_argument(
        "--quant",
        dest="quants",
        action="append",
        metavar="TYPE",
        help="GGUF type (repeatable, comma lists too): f16, bf16, q8_0 (default), "
        "or via llama.cpp q4_k_m, q5_k_m, q6_k, q3_k_m, q2_k, ...",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/exports)")
    parser.add_argument("--ollama", action="store_true", help="write an Ollama Modelfile per GGUF")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace existing export targets (with --push: push into a repo that has files)",
    )
    parser.add_argument(
        "--dtype",
        choices=("bf16", "fp16"),
        help="merge precision (default bf16; fp16 when GGUF f16/q8_0/k-quants are asked for)",
    )
    parser.add_argument(
        "--push",
        metavar="REPO_ID",
        help="then push everything exported to this Hugging Face repo (NAME or NAMESPACE/NAME), "
        "with a model card, in one commit; the token comes from `hf auth login` or HF_TOKEN",
    )
    parser.add_argument(
        "--private", action="store_true", help="with --push: create the repo private"
    )
    parser.add_argument(
        "--revision", metavar="BRANCH", help="with --push: commit to this branch (default main)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--run-dir", metavar="DIR", help="root folder for runs (for `latest`)")
    return parser


class StderrProgress:
    """Phase progress on stderr. On a terminal the current step's line is rewritten in place
    (fractions with an ETA, and ``tick()`` moves its clock every second, so nothing sits
    still); into a pipe or a log file each step is one line, and updates of a step are logged
    every ``LOG_EVERY`` seconds."""

    LOG_EVERY = 5.0

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""  # the current step's first message
        self.shown = ""  # what its line shows now
        self.open = False  # a terminal line not yet ended by a newline
        self.started = time.monotonic()
        self.step_started, self.step_fraction = self.started, 0.0
        self.logged = 0.0
        self.lock = threading.Lock()  # tick() runs on its own thread

    def __call__(self, message: str, fraction: float | None = None) -> None:
        with self.lock:
            now = time.monotonic()
            partial = fraction is not None and 0 < fraction < 1
            # A message that extends the last one ("verifying X (3s)") updates that step.
            extends = bool(self.last) and message.startswith(self.last) and message != self.last
            if partial:
                if fraction < self.step_fraction:
                    self.step_started = now  # a new measured step
                self.step_fraction = fraction
                spent = now - self.step_started
                eta = f", ETA {spent * (1 - fraction) / fraction:.0f}s" if spent >= 1 else ""
                self._update(f"{message} ({fraction:.0%}{eta})", now)
            elif extends and fraction is None:
                self._update(message, now)
            else:
                self.step_started, self.step_fraction = now, 0.0
                self.last = message
                self._end_line()
                self.shown = message
                self._write(message, now, end="" if self.tty else "\n")
                self.open = self.tty

    def tick(self) -> None:
        """On a terminal: redraw the current line with the time now (a moving clock)."""
        with self.lock:
            if self.tty and self.open:
                self._write(self.shown, time.monotonic(), end="")

    def close(self) -> None:
        with self.lock:
            self._end_line()

    def _update(self, text: str, now: float) -> None:
        self.shown = text
        if self.tty:
            self._write(text, now, end="")
            self.open = True
        elif now - self.logged >= self.LOG_EVERY:
            self.logged = now
            self._write(text, now, end="\n")

    def _end_line(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            self.open = False

    def _write(self, text: str, now: float, *, end: str) -> None:
        prefix = "\r" if self.tty else ""
        clear = "\x1b[K" if self.tty else ""
        sys.stderr.write(f"{prefix}[{now - self.started:6.1f}s] {text}{clear}{end}")
        sys.stderr.flush()


def ticking(progress: StderrProgress) -> threading.Event:
    """Call ``progress.tick()`` every second until the returned event is set."""
    done = threading.Event()

    def run() -> None:
        while not done.wait(1.0):
            progress.tick()

    threading.Thread(target=run, name="finetty-export-clock", daemon=True).start()
    return done


def cmd_export(args: argparse.Namespace) -> int:
    quiet_libraries()
    from engine.export.child import export_in_child
    from engine.export.files import human_size

    quants = [q.strip().lower() for item in (args.quants or ["q8_0"]) for q in item.split(",")]
    target = check_target(args)
    # In a child process: a native crash or the out-of-memory killer ends it, not this command,
    # which then reports how it died and removes the unfinished files.
    progress = StderrProgress()
    clock = ticking(progress)
    pushed = None
    if target is not None:
        state = "existing" if target.repo_exists else "new"
        progress(f"hub: {target.repo_id} ({state} repo) as {target.user}: checked", None)
    try:
        report = export_in_child(
            args.run,
            list(dict.fromkeys(args.formats)),
            quants=[q for q in quants if q],
            out=Path(args.out) if args.out else None,
            ollama_files=args.ollama,
            force=args.force,
            dtype=args.dtype,
            runs_root=Path(args.run_dir) if args.run_dir else None,
            progress=progress,
        )
        if target is not None:
            from engine.export.hub import push_export

            pushed = push_export(target, report, progress=progress)
    finally:
        clock.set()
        progress.close()
    if args.json:
        result: dict[str, Any] = {
            "run_dir": str(report.run_dir),
            "out_dir": str(report.out_dir),
            "items": [item.to_dict() for item in report.items],
        }
        if pushed is not None:
            result["push"] = {
                "url": pushed.url,
                "commit_url": pushed.commit_url,
                "files": [{"path": path, "size": size} for path, size in pushed.files],
            }
        print(json.dumps(result, indent=2))
        return 0
    for item in report.items:
        print(f"{item.kind:9} {human_size(item.size):>10}  {item.path}")
        for check in item.checks:
            print(f"{'':21}{check}")
        if item.command:
            print(f"{'':21}run: {item.command}")
    if pushed is not None:  # only once the commit landed: push_export raises before that
        size = human_size(sum(size for _, size in pushed.files))
        print(f"{'pushed':9} {size:>10}  {len(pushed.files)} files in one commit: {pushed.url}")
    return 0


def check_target(args: argparse.Namespace) -> Any:
    """With --push: the hub checks (login, network, rights, name free), before any export."""
    if args.push is None:
        if args.private or args.revision:
            from engine.export.files import ExportError

            raise ExportError(
                "--private and --revision only go with --push.",
                hint="Add --push REPO_ID, or leave them out.",
            )
        return None
    from engine.export.hub import check_push

    return check_push(args.push, revision=args.revision, private=args.private, force=args.force)

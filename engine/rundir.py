"""The run directory: the on-disk contract every front-end reads (see DESIGN.md).

runs/<name>/<YYYYmmdd-HHMMSS>/ holds config.yaml, events.jsonl (appended and flushed per event),
status.json (replaced atomically), commands.jsonl (the control channel), checkpoints/, final/,
exports/ and log.txt.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import RunDirError
from engine.events import (
    Alarm,
    CheckpointSaved,
    Eval,
    Event,
    Failed,
    Finished,
    LogLine,
    RunStarted,
    StateChanged,
    Step,
)
from engine.runstate import RunState, read_events
from engine.units import duration, share

COMMANDS = ("pause", "resume", "save", "stop", "abort")


def runs_root(override: str | None = None) -> Path:
    return Path(override or os.environ.get("FINETTY_RUNS") or "runs").expanduser()


def new_run_dir(name: str, root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / name / stamp
    suffix = 1
    try:
        while path.exists():
            suffix += 1
            path = root / name / f"{stamp}-{suffix}"
        path.mkdir(parents=True)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise RunDirError(
            f"Cannot create the run directory under {root}: {reason}.",
            hint="Pass a writable folder with --run-dir (or $FINETTY_RUNS).",
        ) from None
    return path


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def all_runs(root: Path) -> list[Path]:
    """Every run directory under root, newest first."""
    if not root.is_dir():
        return []
    runs = [p.parent for p in root.glob("*/*/events.jsonl")]
    return sorted(runs, key=lambda p: (p / "events.jsonl").stat().st_mtime, reverse=True)


def resolve_run(ref: str, root: Path) -> Path:
    """A run directory by path, or ``latest``."""
    if ref == "latest":
        runs = all_runs(root)
        if not runs:
            raise RunDirError(
                f"No runs found under {root}.", hint="Start one with `finetty train smollm2-demo`."
            )
        return runs[0]
    path = Path(ref).expanduser()
    if not (path / "events.jsonl").is_file():
        raise RunDirError(
            f"{ref} is not a finetty run directory (no events.jsonl).",
            hint=f"Pass a folder under {root}/<name>/, or `latest`.",
        )
    return path


class RunDirSink:
    """Writes events.jsonl, log.txt and status.json as events arrive."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self._events = open(run_dir / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._log = open(run_dir / "log.txt", "a", encoding="utf-8")  # noqa: SIM115
        # A resumed run is one run: its state goes on from every segment already recorded, so a
        # resume that fails early keeps the last true step, best loss and checkpoint.
        self.state = RunState.from_events(read_events(run_dir / "events.jsonl"))
        self.state.pid = self.pid = os.getpid()
        self._last_status_write = 0.0

    @property
    def status(self) -> dict[str, Any]:
        """What status.json says (derived from the run's state machine)."""
        return self.state.to_status()

    def emit(self, event: Event) -> None:
        with self._lock:
            self._write(event)

    def _write(self, event: Event) -> None:
        self._events.write(event.to_json() + "\n")
        self._events.flush()
        line = human_line(event)
        if line:
            self._log.write(time.strftime("%H:%M:%S ", time.localtime(event.time)) + line + "\n")
            self._log.flush()
        if self._update_status(event):
            self._write_status()

    def abandon(self, text: str) -> None:
        """Last words before ``os._exit`` (a second Ctrl+C): a log line and a final "stopped".

        Runs in a signal handler, so it waits for the lock briefly rather than forever.
        """
        if not self._lock.acquire(timeout=2.0):
            return
        try:
            if self._events.closed or self.state.terminal:
                return
            started = self.state.started or time.time()
            step = self.state.step
            self._write(LogLine(level="warning", text=text))
            self._write(Finished("stopped", step, {}, {}, time.time() - started))
        finally:
            self._lock.release()

    def _update_status(self, event: Event) -> bool:
        changed = self.state.apply(event)
        self.state.pid = self.pid  # this process writes the run, whatever a new segment reset
        if not changed:
            return False
        if isinstance(event, Step):
            # Steps can be many per second on a GPU; the status file needs no more than ~1 Hz.
            return time.monotonic() - self._last_status_write > 1.0
        return True

    def _write_status(self) -> None:
        status = json.dumps(self.state.to_status(), indent=2)
        atomic_write_text(self.run_dir / "status.json", status)
        self._last_status_write = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._write_status()
            self._events.close()
            self._log.close()


def human_line(event: Event) -> str | None:
    """One log line per event, shared by log.txt and the plain console reporter."""
    if isinstance(event, Step):
        grad = f" grad_norm {event.grad_norm:.3f}" if event.grad_norm is not None else ""
        return (
            f"step {event.step}/{event.total_steps} epoch {event.epoch:.2f} loss {event.loss:.4f} "
            f"lr {event.learning_rate:.2e}{grad} {event.tokens_per_s:.0f} tok/s {event.step_time_s:.2f} s/step"
        )
    if isinstance(event, Eval):
        return f"eval step {event.step} loss {event.loss:.4f} ppl {event.perplexity:.2f}"
    if isinstance(event, LogLine):
        return f"{event.level}: {event.text}" if event.level != "info" else event.text
    if isinstance(event, Alarm):
        return f"warning ({event.kind}): {event.message} Remedy: {event.remedy}"
    if isinstance(event, CheckpointSaved):
        return f"checkpoint ({event.reason}) step {event.step}: {event.path}"
    if isinstance(event, StateChanged):
        return f"state: {event.state}" + (f" ({event.detail})" if event.detail else "")
    if isinstance(event, RunStarted):
        return (
            f"run {event.name}: {event.model.get('name')} on {event.device} ({event.precision}), "
            f"{event.trainable_params:,} of {event.total_params:,} params trainable "
            f"({share(event.trainable_params, event.total_params)}), {event.total_steps} steps"
        )
    if isinstance(event, Finished):
        return f"{event.status} at step {event.step} in {duration(event.elapsed_s)}"
    if isinstance(event, Failed):
        return f"FAILED ({event.kind}): {event.message}" + (
            f" Hint: {event.hint}" if event.hint else ""
        )
    return None


@dataclass
class CommandReader:
    """Reads commands appended to <run_dir>/commands.jsonl by other processes (`finetty watch`)."""

    path: Path
    offset: int = 0

    def __post_init__(self) -> None:
        # Only the owner may drive the run: the channel is private, also when a resume finds it.
        fd = os.open(self.path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        self.offset = self.path.stat().st_size

    def poll(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self.offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # a line still being written
        # Offsets count bytes: junk that is not UTF-8 must not shift where the next line starts.
        self.offset += end + 1
        commands = []
        for line in chunk[:end].splitlines():
            try:
                command = json.loads(line.decode("utf-8")).get("command")
            except (ValueError, AttributeError, RecursionError):
                continue
            if isinstance(command, str) and command in COMMANDS:
                commands.append(command)
        return commands


def send_command(run_dir: Path, command: str) -> None:
    """Ask a running process to pause/resume/save/stop/abort through its run directory."""
    if command not in COMMANDS:
        raise RunDirError(
            f"Unknown command '{command}'.", hint=f"Use one of: {', '.join(COMMANDS)}."
        )
    path = run_dir / "commands.jsonl"
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"command": command, "time": time.time()}) + "\n")


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The run directory: the on-disk contract every front-end reads (see DESIGN.md).

runs/<name>/<YYYYmmdd-HHMMSS>/ holds config.yaml, events.jsonl (appended and flushed per event),
status.json (replaced atomically), commands.jsonl (the control channel), checkpoints/, final/,
exports/ and log.txt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from engine.core.errors import RunDirError
from engine.core.events import (
    Alarm,
    CheckpointSaved,
    Eval,
    Event,
    Failed,
    Finished,
    LogLine,
    PreferenceAccuracy,
    RunStarted,
    StateChanged,
    Step,
)
from engine.core.units import duration, share
from engine.runs import runlock
from engine.runs.runstate import RunState, read_events

COMMANDS = ("pause", "resume", "save", "stop", "abort")


def runs_root(override: str | None = None) -> Path:
    return Path(override or os.environ.get("FINETTY_RUNS") or "runs").expanduser()


def new_run_dir(name: str, root: Path) -> Path:
    """A new, empty run directory: ``root/name/<stamp>``, or ``<stamp>-2``, ``-3``... when taken.

    mkdir is the one atomic claim: several processes started in the same second each get their
    own folder, because a name another one created first just moves on to the next suffix.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        (root / name).mkdir(parents=True, exist_ok=True)
        for suffix in range(1, MAX_SAME_SECOND + 1):
            path = root / name / (stamp if suffix == 1 else f"{stamp}-{suffix}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise _run_dir_error(root, exc) from None
    raise RunDirError(
        f"Cannot create the run directory under {root / name}: {MAX_SAME_SECOND} runs named "
        f"{stamp}[-N] exist already.",
        hint="Wait a second and start it again, or use another --run-dir.",
    )


# More runs of one preset started within one second than anyone means to start.
MAX_SAME_SECOND = 1000


def _run_dir_error(root: Path, exc: OSError | ValueError) -> RunDirError:
    """The error for a runs root that cannot take a new run, with the fix for its cause."""
    reason = getattr(exc, "strerror", None) or str(exc)
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        hint = f"Free disk space (check with `df -h {root}`), or pass another --run-dir."
    elif code in (errno.ENOTDIR, errno.EEXIST):
        hint = f"{root} (or a folder above it) is a file: pass a folder with --run-dir (or $FINETTY_RUNS)."
    elif isinstance(exc, ValueError):
        hint = "The runs root or the preset name holds a NUL character: remove it."
    else:
        hint = "Pass a writable folder with --run-dir (or $FINETTY_RUNS)."
    return RunDirError(f"Cannot create the run directory under {root}: {reason}.", hint=hint)


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


def resolve_run(ref: str, root: Path, *, name: str | None = None) -> Path:
    """A run directory by path, or ``latest``: the newest run (of preset ``name``, if given)
    that started training. A run that ended before its first step is no one's ``latest``."""
    if ref == "latest":
        runs = (run for run in all_runs(root) if name is None or run.parent.name == name)
        latest = next((run for run in runs if not never_trained(run)), None)
        if latest is None:
            where = root / name if name else root
            raise RunDirError(
                f"No runs found under {where}.",
                hint=f"Start one with `finetty train {name or 'smollm2-demo'}`.",
            )
        return latest
    path = Path(ref).expanduser()
    if not (path / "events.jsonl").is_file():
        raise RunDirError(
            f"{ref} is not a finetty run directory (no events.jsonl).",
            hint=f"Pass a folder under {root}/<name>/, or `latest`.",
        )
    return path


def check_resumable(run_dir: Path, *, need_checkpoint: bool = True) -> None:
    """Refuse a resume before any file of the run is opened: no other process may be training
    it, it must have a checkpoint (``need_checkpoint``; the resume itself reports it otherwise),
    and it must not be finished (its final/ is never replaced)."""
    from engine.runs.checkpoint import complete_checkpoints

    pid = runlock.holder(run_dir)
    if pid is not None:
        raise runlock.busy_error(run_dir, pid)
    if need_checkpoint and not complete_checkpoints(run_dir / "checkpoints"):
        # A finished or failed run must not turn into a newly failed one.
        raise RunDirError(
            f"{run_dir} has no complete checkpoint to resume from.",
            hint="Start a new run instead (without --resume).",
        )
    status = read_status(run_dir)
    final = run_dir / "final"
    if final.exists() or (isinstance(status, dict) and status.get("state") == "finished"):
        raise RunDirError(
            f"{run_dir} has finished: its final model is in {final}. Resuming would only "
            "overwrite it.",
            hint="To train further, start a new run from the trained model: export it with "
            f"`finetty export {run_dir} --format merged`, then set model.name_or_path to the "
            "exported folder in a preset (or --set model.name_or_path=FOLDER).",
            title="Run already finished",
        )


def how_to_finish(run_dir: Path) -> str:
    """What to do about a run that has no final model yet, from what it is doing now."""
    from engine.runs.checkpoint import complete_checkpoints

    pid = runlock.holder(run_dir)
    if pid is not None:
        who = f"process {pid}" if pid else "another process"
        return (
            f"It is being trained right now by {who}: follow it with `finetty watch {run_dir}` "
            "and come back when it has finished. Do not resume it while it runs."
        )
    if complete_checkpoints(run_dir / "checkpoints"):
        return f"It stopped before the end: continue it with `finetty train --resume {run_dir}`."
    return "It ended without a checkpoint to continue from: start a new run."


# How much of events.jsonl to read for its run_started event (it comes within the first KBs).
STARTED_SCAN_BYTES = 16 << 20


def never_trained(run_dir: Path) -> bool:
    """True for a run that ended, or whose process died, before training started (no
    run_started event): a config or dataset mistake found after its folder was made."""
    try:
        with open(run_dir / "events.jsonl", "rb") as handle:
            for line in handle:
                if b'"run_started"' in line or b'"finished"' in line:
                    event = _event(line)
                    if event.get("type") == "run_started":
                        return False
                    if event.get("type") == "finished" and event.get("status") == "finished":
                        return False  # it ran to its end (a stop while loading does not count)
                if handle.tell() > STARTED_SCAN_BYTES:
                    return False  # a run that wrote this much has trained
    except OSError:
        return False  # unreadable: not ours to hide
    return runlock.holder(run_dir) is None  # still loading: it is the newest run being started


def _event(line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


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


# A preference step's figures shown beside its loss: (metric, label, format).
PREFERENCE_FIGURES = (
    ("rewards/margins", "margin", ".3f"),
    ("rewards/accuracies", "acc", ".2f"),
    ("kl", "kl", ".3f"),
)


def preference_text(metrics: dict[str, float]) -> str:
    """``margin 0.412 acc 0.75`` (KTO's ``kl`` too); "" for a step without them (SFT)."""
    return " ".join(
        f"{label} {metrics[key]:{spec}}"
        for key, label, spec in PREFERENCE_FIGURES
        if key in metrics
    )


def human_line(event: Event) -> str | None:
    """One log line per event, shared by log.txt and the plain console reporter."""
    if isinstance(event, Step):
        grad = f" grad_norm {event.grad_norm:.3f}" if event.grad_norm is not None else ""
        preference = preference_text(event.metrics)
        return (
            f"step {event.step}/{event.total_steps} epoch {event.epoch:.2f} loss {event.loss:.4f} "
            + (f"{preference} " if preference else "")
            + f"lr {event.learning_rate:.2e}{grad} {event.tokens_per_s:.0f} tok/s {event.step_time_s:.2f} s/step"
        )
    if isinstance(event, PreferenceAccuracy):
        return (
            f"preference accuracy {event.stage} training: {event.accuracy:.0%} "
            f"({event.correct}/{event.total} held-out pairs)"
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
            f"run {event.name}: {event.task}, {event.model.get('name')} on {event.device} "
            f"({event.precision}), "
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


class CommandReader:
    """Reads commands appended to <run_dir>/commands.jsonl by other processes (`finetty watch`).

    The file is the only thing others may write, so it is read defensively: a symbolic link is
    refused (never followed, never chmodded); a file truncated or replaced behind the reader's
    back (``>`` instead of ``>>``, an editor's save) is noticed and read again from its start;
    and a command carrying an id (``send_command`` writes one) is applied once, however often
    it is read. A rewrite is told from an append by a digest of every byte read so far (the
    file is small and local; the last line alone let `save, stop` > `stop, stop, pause` pass as
    an append). A rewrite that starts with exactly the bytes already read reads as an append.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._identity: tuple[int, int] | None = None
        self._read = hashlib.sha256()  # of bytes [0, offset): a rewrite of them changes it
        self._mtime = 0  # when the file was last read up to its end: a same-size rewrite moves it
        self._seen: set[str] = set()
        # Only the owner may drive the run: the channel is private, also when a resume finds it.
        try:
            fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise _channel_error(path, exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise RunDirError(
                    f"{path} is not a regular file, so it cannot be the run's command channel.",
                    hint=f"Remove it (`rm {path}`); finetty makes its own.",
                )
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        # Commands written before this process started belong to an earlier one: skip them,
        # and remember their ids, so that a rewrite of the file cannot replay them either.
        for command_id, _ in self._read_new():
            if command_id:
                self._seen.add(command_id)

    def poll(self) -> list[str]:
        return [command for command_id, command in self._read_new() if self._fresh(command_id)]

    def _fresh(self, command_id: str | None) -> bool:
        if command_id is None:
            return True
        if command_id in self._seen:
            return False
        self._seen.add(command_id)
        return True

    def _read_new(self) -> list[tuple[str | None, str]]:
        """(id, command) for every complete line past the offset, rereading a rewritten file."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return []  # gone, or replaced by a symbolic link: nothing is read through a link
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return []
            identity = (info.st_dev, info.st_ino)
            if (
                identity != self._identity
                or info.st_size < self.offset
                or (info.st_size == self.offset and info.st_mtime_ns != self._mtime)
                or not self._prefix_intact(handle)
            ):
                # Replaced, truncated, or rewritten in place (`>` of a line as long as before).
                self._identity, self.offset, self._read = identity, 0, hashlib.sha256()
            self._mtime = info.st_mtime_ns
            if info.st_size <= self.offset:
                return []
            handle.seek(self.offset)
            chunk = handle.read(info.st_size - self.offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # a line still being written
        # Offsets count bytes: junk that is not UTF-8 must not shift where the next line starts.
        self._read.update(chunk[: end + 1])
        self.offset += end + 1
        lines = chunk[:end].split(b"\n")
        return [parsed for parsed in map(_parse_command, lines) if parsed is not None]

    def _prefix_intact(self, handle: Any) -> bool:
        handle.seek(0)
        return hashlib.sha256(handle.read(self.offset)).digest() == self._read.digest()


def _parse_command(line: bytes) -> tuple[str | None, str] | None:
    try:
        data = json.loads(line.decode("utf-8"))
        command = data.get("command")
    except (ValueError, AttributeError, RecursionError):
        return None
    if not (isinstance(command, str) and command in COMMANDS):
        return None
    command_id = data.get("id")
    return (command_id if isinstance(command_id, str) and command_id else None), command


def _channel_error(path: Path, exc: OSError) -> RunDirError:
    if exc.errno == errno.ELOOP:
        return RunDirError(
            f"{path} is a symbolic link; the run's command channel must be a plain file.",
            hint=f"Remove the link (`rm {path}`); finetty makes its own.",
        )
    return RunDirError(
        f"Cannot open the run's command channel {path}: {exc.strerror or exc}.",
        hint="The run directory must be writable by the user who trains it.",
    )


def send_command(run_dir: Path, command: str) -> None:
    """Ask a running process to pause/resume/save/stop/abort through its run directory."""
    if command not in COMMANDS:
        raise RunDirError(
            f"Unknown command '{command}'.", hint=f"Use one of: {', '.join(COMMANDS)}."
        )
    path = run_dir / "commands.jsonl"
    try:
        fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _channel_error(path, exc) from None
    line = json.dumps({"command": command, "id": uuid.uuid4().hex, "time": time.time()}) + "\n"
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(line)


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

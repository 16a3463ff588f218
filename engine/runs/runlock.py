"""One writer per run directory: an OS lock held for the life of the training process.

The lock is ``fcntl.flock`` on ``<run_dir>/writer.lock``. The kernel drops it when the process
ends, however it ends (SIGKILL and a power cut included), so a stale lock cannot block a resume;
a pid file alone could. The pid written into the file only names the holder in messages.

The multi-GPU launcher makes a run directory for the ranks it starts. It hands it over through
the environment (never a command-line flag a user could point at an existing run), with a token
that only the launcher wrote into that directory (``launch_env`` / ``launched_run_dir``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from pathlib import Path

from engine.core.errors import RunDirError

LOCK_NAME = "writer.lock"
LAUNCH_TOKEN_NAME = ".launch-token"
ENV_LAUNCH_DIR = "FINETTY_LAUNCH_RUN_DIR"
ENV_LAUNCH_TOKEN = "FINETTY_LAUNCH_TOKEN"
# What a freshly launched run directory may hold before rank 0 starts writing it.
LAUNCH_FILES = {LAUNCH_TOKEN_NAME, "launcher.log", "config.yaml"}


class RunLock:
    """The held lock of one run directory; ``release`` (or process exit) lets it go."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir = run_dir
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def busy_error(run_dir: Path, pid: int | None) -> RunDirError:
    """The one message for "another process is training this run"."""
    who = f"process {pid}" if pid else "another process"
    stop = f"`kill -TERM {pid}`" if pid else "SIGTERM"
    return RunDirError(
        f"{run_dir} is being trained right now by {who}; two processes must never write one run.",
        hint=f"Follow or drive it with `finetty watch {run_dir}`. To resume it later, stop it "
        f"first (`x` in watch, or {stop}: both save a checkpoint), then run "
        f"`finetty train --resume {run_dir}`.",
        title="Run is in use",
    )


def unwritable_error(run_dir: Path, exc: OSError) -> RunDirError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"Free disk space (check with `df -h {run_dir}`), then try again."
    elif exc.errno == errno.ELOOP:
        hint = f"{run_dir / LOCK_NAME} is a symbolic link; remove it (finetty writes its own)."
    else:
        hint = (
            "A run can only be resumed where it can be written. Copy it to a writable folder "
            f"(`cp -a {run_dir} NEW_ROOT/NAME/`) and resume that copy."
        )
    return RunDirError(f"Cannot write to the run directory {run_dir}: {reason}.", hint=hint)


def acquire(run_dir: Path) -> RunLock:
    """Take the run's writer lock, or raise RunDirError naming the process that holds it."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise unwritable_error(run_dir, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid_in(fd)
        os.close(fd)
        raise busy_error(run_dir, pid) from None
    except OSError as exc:
        os.close(fd)
        raise unwritable_error(run_dir, exc) from None
    # The pid only names the holder in messages: a full disk must not cost the lock itself.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(run_dir, fd)


def holder(run_dir: Path) -> int | None:
    """The pid of the process that trains this run now (0 when unknown), or None when none does.

    Read-only: it works on a read-only copy of a run, and never creates the lock file.
    """
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no finetty process has written this run since locks exist
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid_in(fd) or 0
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# -- the launcher's hand-over -------------------------------------------------------------------
def launch_env(run_dir: Path) -> dict[str, str]:
    """Mark ``run_dir`` (made by the launcher, still empty) as the ranks' run directory.

    Returns the environment variables the launcher passes to torchrun: the folder and a random
    token, which must match the one written inside the folder.
    """
    token = secrets.token_hex(16)
    fd = os.open(
        run_dir / LAUNCH_TOKEN_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
    )
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token)
    return {ENV_LAUNCH_DIR: str(run_dir), ENV_LAUNCH_TOKEN: token}


def launched_run_dir() -> Path | None:
    """The run directory the launcher made for this job, checked; None when not launched so.

    Refused unless the folder holds the launcher's token and nothing a run has written yet, so
    that this channel can never point a job at an existing run.
    """
    value = os.environ.get(ENV_LAUNCH_DIR)
    if not value:
        return None
    run_dir = Path(value)
    token_file = run_dir / LAUNCH_TOKEN_NAME
    try:
        fd = os.open(token_file, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "r", encoding="ascii", errors="replace") as handle:
            written = handle.read(64)
        extra = sorted(p.name for p in run_dir.iterdir() if p.name not in LAUNCH_FILES)
    except OSError:
        written, extra = None, []
    expected = os.environ.get(ENV_LAUNCH_TOKEN, "")
    if not expected or not written or not secrets.compare_digest(written, expected):
        raise RunDirError(
            f"${ENV_LAUNCH_DIR} names {run_dir}, which the multi-GPU launcher did not prepare "
            "for this job.",
            hint=f"${ENV_LAUNCH_DIR} is set by `finetty train --gpus N` for its own processes; "
            "unset it, and resume an existing run with --resume.",
        )
    if extra:
        raise RunDirError(
            f"The launcher's run directory {run_dir} already holds {', '.join(extra[:5])}.",
            hint="Start the job again with `finetty train PRESET --gpus N`: it makes a new one.",
        )
    return run_dir


def claim_launched(run_dir: Path) -> None:
    """Rank 0 has the lock: the token is spent, so the same environment cannot be replayed."""
    with contextlib.suppress(OSError):
        (run_dir / LAUNCH_TOKEN_NAME).unlink()

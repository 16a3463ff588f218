"""Safe file output for exports: space checks, staging next to the target, rename when verified.

Everything is written under a hidden ``.partial-*`` name in the target's folder and renamed into
place only after its verification passed, so a crash or a failed check never leaves a file that
looks finished. An existing target is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, FinettyError

Progress = Callable[[str, "float | None"], None]
_MARGIN_BYTES = 64 * 1024 * 1024  # headroom for metadata, tokenizer files and file-system slack


class ExportError(FinettyError):
    """An export cannot start: bad run, unsupported model, no tool, no space, target exists."""

    exit_code = EXIT_BAD_INPUT
    kind = "export"
    default_title = "Export problem"


class VerificationError(FinettyError):
    """A written file failed its round-trip check; nothing was left under the target name."""

    exit_code = EXIT_FAILED
    kind = "export_verification"
    default_title = "Export verification failed"


class ExportFailed(FinettyError):
    """A step of the export failed while running (a tool crashed, a write failed)."""

    exit_code = EXIT_FAILED
    kind = "export"
    default_title = "Export failed"


def no_progress(message: str, fraction: float | None = None) -> None:
    """The default progress callback: ignore."""


@contextlib.contextmanager
def size_progress(path: Path, expected: int, progress: Progress, label: str) -> Iterator[None]:
    """While the block writes ``path`` (a file or folder), report the bytes on disk every half
    second as ``label: 12.0 of 256.0 MiB`` with that share as the fraction. A step that writes
    through a library call (save_pretrained, llama.cpp) still shows measured progress."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            try:
                written = path_size(path) if path.exists() else 0
            except OSError:  # a file renamed or removed while it was listed
                continue
            share = min(written / expected, 0.99) if expected > 0 else None
            progress(f"{label}: {human_size(written)} of ~{human_size(expected)}", share)

    watcher = threading.Thread(target=watch, name="finetty-export-size", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def path_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_absent(targets: list[Path], force: bool) -> None:
    """Refuse to touch any existing target unless ``force``; checked before any work starts."""
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ExportError(
            f"Export target already exists: {', '.join(existing)}",
            hint="Pass --force to replace it, or choose another folder with --out.",
        )


def make_out_dir(folder: Path) -> None:
    """Create the output folder (and its parents) and prove a file can be written in it."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(
            f"The output folder {folder} is a file, not a folder.",
            hint="Give --out a folder (it is created if missing), or move the file away.",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix=".partial-probe-", dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        where = (
            f" ({error.filename})" if error.filename and str(error.filename) != str(folder) else ""
        )
        raise ExportError(
            f"Cannot write the export to {folder}: {reason}{where}.",
            hint="Choose a folder on a writable disk with --out DIR (it is created if missing).",
        ) from None


def check_disk_space(folder: Path, needed: int, what: str) -> None:
    """Fail before writing when ``folder``'s file system has less than ``needed`` bytes free."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + _MARGIN_BYTES:
        raise ExportError(
            f"Not enough disk space for {what}: needs about {human_size(needed + _MARGIN_BYTES)}, "
            f"{human_size(free)} free on {probe}.",
            hint="Free some space, or write elsewhere with --out DIR.",
        )


def safetensors_params(folder: Path) -> int:
    """Parameter count of a model folder, read from the safetensors headers only (no weights)."""
    total = 0
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


@contextlib.contextmanager
def staged(target: Path, *, directory: bool, force: bool) -> Iterator[Path]:
    """Yield a hidden staging path beside ``target``; rename it into place if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".partial-{target.name}-"
    if directory:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
        os.close(fd)
        staging = Path(name)
    try:
        yield staging
        replace(staging, target, force=force)
    finally:
        remove(staging)


def replace(staging: Path, target: Path, *, force: bool) -> None:
    if target.exists():
        if not force:  # appeared while we worked: never clobber it
            raise ExportError(f"{target} appeared during the export; it was left untouched.")
        trash = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, trash)
        os.replace(staging, target)
        remove(trash)
    else:
        os.replace(staging, target)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_text(path: Path, text: str, *, force: bool) -> None:
    with staged(path, directory=False, force=force) as staging:
        staging.write_text(text, encoding="utf-8")

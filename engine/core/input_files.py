"""Which paths finetty reads as input files: regular files only (symlinks to them are fine).

A named pipe blocks the reader forever (and the open ignores SIGTERM), and /dev/zero or
/dev/urandom never end, so a preset or dataset path that is not a regular file is refused
before it is opened, with what it is instead. A leaf module: stdlib only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(path: Path) -> str | None:
    """What ``path`` is (following symlinks) when it is not a regular file; None when it is one
    or does not exist (a dangling symlink counts as missing)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, unreadable folder on the way, NUL in the name
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "an unknown kind of file")


def regular_file_problem(path: Path) -> str | None:
    """ "PATH is a named pipe (FIFO), not a regular file" or None when it can be read as a file."""
    kind = file_kind(path)
    if kind is None:
        return None
    target = os.path.realpath(path)
    via = f" (a symlink to {target})" if Path(path).is_symlink() else ""
    return f"{path}{via} is {kind}, not a regular file"

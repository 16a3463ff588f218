"""A local model's weight files read ahead of ``from_pretrained``, so that loading measures bytes.

transformers exposes no public hook into its weight-loading loop, and on a box that has just
started (a rented GPU, a cold page cache) most of a local load is reading the files from disk.
Reading them once, in order, with a byte count, puts them in the page cache; the loader then
maps them from memory. Where the files would not fit in half the free memory the read-ahead is
skipped (it would only be read twice), and the caller's moving clock is all the user sees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

CHUNK = 16 * 2**20
REPORT_INTERVAL_S = 0.5

# (bytes read, bytes in all, seconds so far), at most twice a second and once at the end.
Report = Callable[[int, int, float], None]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a local model folder, in name order (shards in order)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def fits_in_page_cache(total_bytes: int) -> bool:
    """Whether reading ``total_bytes`` ahead leaves them cached until the loader maps them."""
    import psutil

    return total_bytes <= psutil.virtual_memory().available // 2


def read_ahead(files: list[Path], report: Report) -> int:
    """Read ``files`` once, start to end, reporting progress; returns the bytes read.

    A file that cannot be read is left to the loader, whose error names it."""
    total = sum(p.stat().st_size for p in files)
    buffer = bytearray(CHUNK)
    done, started, last = 0, time.monotonic(), 0.0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            while count := os.readv(fd, [buffer]):
                done += count
                now = time.monotonic()
                if now - last >= REPORT_INTERVAL_S:
                    last = now
                    report(done, total, now - started)
        except OSError:
            pass
        finally:
            os.close(fd)
    report(done, total, time.monotonic() - started)
    return done

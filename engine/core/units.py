"""One way to write a duration and a parameter count, for every screen, line and log."""

from __future__ import annotations

import math


def duration(seconds: float | None) -> str:
    """``45s``, ``2m41s``, ``1h05m``, ``2d03h``; ``--`` when unknown (an ETA not known yet, or
    a nonsense figure such as a negative time read from a hand-edited status.json)."""
    if seconds is None or not math.isfinite(seconds) or seconds < -1:
        return "--"
    if seconds >= 100_000 * 86400:
        return ">99999d"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def count(n: int) -> str:
    """A parameter count to three figures: ``4.88M``, ``139M``, ``8.03B``."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            text = f"{n / scale:.3g}"
            return (text if "e" not in text else f"{n / scale:.0f}") + suffix
    return str(n)


def share(part: int, whole: int) -> str:
    """``3.50%``: the percentage every front-end prints for trainable parameters."""
    return f"{100 * part / max(whole, 1):.2f}%"

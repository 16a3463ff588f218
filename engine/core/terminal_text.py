"""User text made safe for a terminal and a log: control characters shown, never obeyed.

A preset's description, a dataset's keys or a file name can hold escape codes ("\\x1b[2J"
clears the screen, "\\x1b]0;...\\x07" retitles the window) or bidirectional overrides that
reorder what is shown. Whatever finetty prints or logs of such text goes through
``printable``, which writes each of those characters as a visible escape (``\\x1b``). A leaf
module: stdlib only, imported by engine.core.errors.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character (tab and newline aside) and bidi override written
    out as an escape, so it prints as itself; text without any comes back unchanged."""
    return _UNPRINTABLE.sub(_escape, text)


def first_unprintable(text: str) -> tuple[int, str] | None:
    """(0-based index, escape) of the first character ``printable`` would escape, or None."""
    match = _UNPRINTABLE.search(text)
    return (match.start(), _escape(match)) if match else None

"""Whether this command has a terminal, and the refusal of the full-screen TUI without one."""

from __future__ import annotations

import sys


def require_terminal(what: str, instead: str, *, preset: str | None = None) -> None:
    """Refuse to start the full-screen TUI without a terminal: it would write escape codes into
    a file or pipe and wait forever for keys that cannot come. A named preset is checked first,
    so a missing one reads the same as in `finetty train`."""
    if preset is not None:
        from engine.config.presets import find_preset

        find_preset(preset)
    if interactive():
        return
    from engine.core.errors import NoTerminalError

    ends = [n for n, s in (("input", sys.stdin), ("output", sys.stdout)) if not _is_tty(s)]
    raise NoTerminalError(
        f"{what} in the full-screen TUI, which needs a terminal, but this command's "
        f"{' and '.join(ends)} {'is' if len(ends) == 1 else 'are'} not one (a pipe, a file or "
        "/dev/null).",
        hint=f"{instead}. Or run it from an interactive shell (ssh -t, tmux).",
    )


def _is_tty(stream: object) -> bool:
    return bool(getattr(stream, "isatty", None)) and stream.isatty()  # type: ignore[attr-defined]


def interactive() -> bool:
    """The TUI needs a terminal on both ends; pipes, nohup and CI get the headless paths."""
    return sys.stdin.isatty() and sys.stdout.isatty()

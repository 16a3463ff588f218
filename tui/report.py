"""The stderr panel of a typed error: its title, message and hint, in red, for every front-end.

A leaf: the CLI, the apps and the screens all print through it, so none imports another for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.core.errors import FinettyError


def report_error(error: FinettyError) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    body = Text(error.message)
    if error.hint:
        body.append("\nHint: ", style="bold")
        body.append(error.hint)
    Console(stderr=True, highlight=False).print(
        Panel(body, title=error.title, title_align="left", border_style="red")
    )

"""`finetty chat TARGET` in a terminal: the chat pane as an app of its own; closing it quits.

The model loads on the screen's worker after the first paint. A load that fails with a
FinettyError ends the app, and the caller reports it like the REPL does (a panel, exit code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from textual.app import App

from engine.core.errors import EXIT_OK, FinettyError
from tui.screens.chat import ChatScreen, GenerationSettings, Loader, ReplyStream, chat_loader

if TYPE_CHECKING:
    from engine.models.inference import ChatTarget


class ChatApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "finetty chat"
    ENABLE_COMMAND_PALETTE = False

    def __init__(
        self, loader: Loader, *, description: str, settings: GenerationSettings | None = None
    ) -> None:
        super().__init__()
        self.loader = loader
        self.description = description
        self.initial = settings
        self.load_error: FinettyError | None = None

    def on_mount(self) -> None:
        screen = ChatScreen(
            loader=self._load_model, description=self.description, settings=self.initial
        )
        self.push_screen(screen, self._chat_closed)

    def _load_model(self, progress: Callable[[str], None]) -> tuple[ReplyStream, bool]:
        """Runs on the screen's worker thread; keeps a typed error for the exit code."""
        try:
            return self.loader(progress)
        except FinettyError as error:
            self.load_error = error
            raise

    def on_chat_screen_loaded(self, message: ChatScreen.Loaded) -> None:
        if self.load_error is not None:
            # Nothing to chat with: leave at once so the panel on stderr is the first thing seen.
            self.exit(return_code=self.load_error.exit_code)

    def _chat_closed(self, _: object = None) -> None:
        self.exit()


def run_chat_app(target: ChatTarget, settings: GenerationSettings) -> int:
    app = ChatApp(chat_loader(target), description=target.description, settings=settings)
    app.run()
    if app.load_error is not None:
        from tui.report import report_error

        report_error(app.load_error)
        return app.load_error.exit_code
    return app.return_code or EXIT_OK

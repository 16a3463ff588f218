"""One error hierarchy for everything a user can get wrong or the machine can refuse.

Each error carries a short title, a message that says what and where, and a hint that says how
to fix it. Front-ends render them (a modal in the TUI, a stderr panel headless) and map
``exit_code`` to the process exit status documented in DESIGN.md.
"""

from __future__ import annotations

from engine.core.terminal_text import printable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 130
EXIT_TERMINATED = 143


class FinettyError(Exception):
    """Base of every error finetty reports to a user instead of a traceback."""

    exit_code: int = EXIT_FAILED
    kind: str = "error"
    default_title: str = "finetty error"

    def __init__(self, message: str, *, hint: str | None = None, title: str | None = None) -> None:
        # Messages quote user text (keys, rows, file names): escape codes in it are shown as
        # text on every screen and in log.txt, never obeyed.
        message = printable(message)
        super().__init__(message)
        self.message = message
        self.hint = printable(hint) if hint else hint
        self.title = printable(title or self.default_title)

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class ConfigError(FinettyError):
    """A preset or ``--set`` override is invalid. ``problems`` lists every one found."""

    exit_code = EXIT_BAD_INPUT
    kind = "config"
    default_title = "Invalid configuration"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        title: str | None = None,
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, title=title)
        self.problems = [printable(problem) for problem in problems] if problems else [self.message]


class DatasetError(FinettyError):
    """The dataset cannot be read or a row is malformed. The message names file and row."""

    exit_code = EXIT_BAD_INPUT
    kind = "dataset"
    default_title = "Dataset problem"


class ModelLoadError(FinettyError):
    """The model cannot be found, read or loaded as asked."""

    exit_code = EXIT_BAD_INPUT
    kind = "model"
    default_title = "Model cannot be loaded"


class RunDirError(FinettyError):
    """A run directory or checkpoint is missing, incomplete or not ours."""

    exit_code = EXIT_BAD_INPUT
    kind = "run_dir"
    default_title = "Run directory problem"


class TrainingError(FinettyError):
    """Training started but failed (NaN loss, a crash inside a step)."""

    exit_code = EXIT_FAILED
    kind = "training"
    default_title = "Training failed"


class OutOfMemoryError(TrainingError):
    """A device ran out of memory during a step."""

    kind = "out_of_memory"
    default_title = "Out of memory"


class NoTerminalError(FinettyError):
    """A full-screen command was started without a terminal (a pipe, a file, /dev/null)."""

    exit_code = EXIT_BAD_INPUT
    kind = "no_terminal"
    default_title = "This needs a terminal"


def weights_only_refusal(exc: BaseException) -> str | None:
    """What ``torch.load(weights_only=True)`` refused, in words that follow a file's name; None
    when ``exc`` is no such refusal. torch's own text advises ``weights_only=False``, which would
    run the pickle's code, so callers show this instead of it."""
    text = str(exc)
    if "unsupported global" in text.lower():
        return (
            "holds pickled Python objects other than tensors; finetty never unpickles those, "
            "since loading them can run code"
        )
    if "Weights only load failed" in text:
        return "is damaged: its data is not what torch.save writes"
    return None

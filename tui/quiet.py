"""Library chatter (weight-loading bars, deprecation notes) turned off before a heavy import.

A leaf: the CLI, the dashboard, the review and export screens call it on the way to the engine.
"""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notes) would tear the live view apart."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|torch)\b.*")

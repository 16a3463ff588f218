from __future__ import annotations

import pytest

from engine.config import derived


@pytest.fixture
def every_task_trainable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task's own section validated whether or not this build trains the task (one it cannot
    train is refused at the task key: test_trainable_tasks.py)."""
    monkeypatch.setattr(derived, "UNTRAINABLE_TASKS", {})

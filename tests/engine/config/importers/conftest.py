from __future__ import annotations

import pytest

from engine.config import derived


@pytest.fixture
def preference_trainable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import as a build that trains the preference tasks does (the dpo branch lifts the
    refusal; test_import_build checks that the refusal itself becomes a row)."""
    monkeypatch.setattr(derived, "UNTRAINABLE_TASKS", {})

"""A task that validates but that this build cannot train is refused at validation, at the task
key: before, task: grpo (and dpo) validated and then silently trained SFT. Every task trains
now, so the refusal is held to a stand-in entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config import derived
from engine.config.derived import UNTRAINABLE_TASKS, untrainable_reason
from engine.config.presets import load_preset, validate
from engine.core.errors import EXIT_BAD_INPUT, ConfigError

REASON = "its loop is not in this build yet; train with task: sft, dpo, orpo, kto or simpo"


def test_an_untrainable_task_is_refused_at_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = "grpo"
    monkeypatch.setattr(derived, "UNTRAINABLE_TASKS", {task: REASON})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "task": task}))
    with pytest.raises(ConfigError) as info:
        load_preset(str(path))
    assert info.value.exit_code == EXIT_BAD_INPUT
    (problem,) = info.value.problems
    # file:line task: the reason, which names what to train with instead
    assert problem.startswith(f"{path}:2 task: ") and "not in this build yet" in problem
    assert "train with task: sft, dpo, orpo, kto or simpo" in problem


def test_every_task_trains_now() -> None:
    assert UNTRAINABLE_TASKS == {}


@pytest.mark.parametrize("task", ["sft", "dpo", "orpo", "kto", "simpo", "grpo"])
def test_the_trained_tasks_validate(task: str) -> None:
    assert untrainable_reason(task) is None
    assert validate({"task": task}).task == task

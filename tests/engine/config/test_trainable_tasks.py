"""A task that validates but that this build cannot train is refused at validation, at the task
key: before, task: grpo (and dpo) validated and then silently trained SFT."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config.derived import UNTRAINABLE_TASKS, untrainable_reason
from engine.config.presets import load_preset, validate
from engine.core.errors import EXIT_BAD_INPUT, ConfigError


@pytest.mark.parametrize("task", sorted(UNTRAINABLE_TASKS))
def test_an_untrainable_task_is_refused_at_its_key(tmp_path: Path, task: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "task": task}))
    with pytest.raises(ConfigError) as info:
        load_preset(str(path))
    assert info.value.exit_code == EXIT_BAD_INPUT
    (problem,) = info.value.problems
    # file:line task: the reason, which names what to train with instead
    assert problem.startswith(f"{path}:2 task: ") and "not in this build yet" in problem
    assert "train with task: sft, dpo, orpo, kto or simpo" in problem


def test_grpo_says_its_loop_is_missing() -> None:
    reason = untrainable_reason("grpo")
    assert reason is not None and "GRPO's training loop is not in this build yet" in reason


@pytest.mark.parametrize("task", ["sft", "dpo", "orpo", "kto", "simpo"])
def test_the_trained_tasks_validate(task: str) -> None:
    assert untrainable_reason(task) is None
    assert validate({"task": task}).task == task

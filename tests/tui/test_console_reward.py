"""The headless console shows a GRPO step's mean reward beside its loss, and nothing new for
other tasks."""

from __future__ import annotations

import io

from engine.core.events import Step
from tui.console import ConsoleReporter, reward_text


def step(metrics: dict[str, float]) -> Step:
    return Step(
        step=3, total_steps=10, epoch=0.5, loss=0.25, learning_rate=1e-4, grad_norm=None,
        tokens_per_s=100.0, samples_per_s=2.0, step_time_s=0.5, tokens=50, trained_tokens=20,
        elapsed_s=1.5, eta_s=3.0, metrics=metrics,
    )  # fmt: skip


def test_a_plain_step_line_carries_the_reward(capsys) -> None:
    reporter = ConsoleReporter(live=False, stdout=io.StringIO())
    reporter.emit(step({"reward": 0.375, "reward_std": 0.5}))
    reporter.emit(step({}))
    lines = capsys.readouterr().err.splitlines()
    assert "loss 0.2500 reward 0.375 lr" in lines[0]
    assert "reward" not in lines[1]


def test_reward_text_is_empty_without_a_reward() -> None:
    assert reward_text({"rewards/margins": 1.0}) == ""
    assert reward_text({"reward": 1.0}) == "reward 1.000"

"""Exact-match accuracy on tasks with checkable answers (the built-in dataset's held-out split)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.builtin_data import Example, is_correct
from engine.events import ExactMatch
from engine.generate import greedy_replies


def exact_match(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    stage: str,
    chat_template: str | None = None,
    max_new_tokens: int | None = None,
) -> ExactMatch:
    if max_new_tokens is None:
        # A reply longer than the longest answer (plus its end marker) is wrong anyway, so
        # don't pay for generating it: this halves the untrained model's evaluation time.
        longest = max(
            len(tokenizer(ex.answer, add_special_tokens=False).input_ids) for ex in examples
        )
        max_new_tokens = longest + 3
    replies = greedy_replies(
        model,
        tokenizer,
        [ex.prompt for ex in examples],
        chat_template=chat_template,
        max_new_tokens=max_new_tokens,
    )
    by_task: dict[str, list[int]] = {}
    shown: list[dict[str, str]] = []
    seen_tasks: set[str] = set()
    for example, reply in zip(examples, replies, strict=True):
        ok = is_correct(example.answer, reply)
        tally = by_task.setdefault(example.task, [0, 0])
        tally[0] += int(ok)
        tally[1] += 1
        if example.task not in seen_tasks:  # one sample per task keeps the event small
            seen_tasks.add(example.task)
            shown.append(
                {
                    "task": example.task,
                    "prompt": example.prompt,
                    "expected": example.answer,
                    "got": reply.strip(),
                }
            )
    correct = sum(c for c, _ in by_task.values())
    return ExactMatch(
        stage=stage,
        accuracy=correct / max(len(examples), 1),
        correct=correct,
        total=len(examples),
        by_task=by_task,
        examples=shown,
    )

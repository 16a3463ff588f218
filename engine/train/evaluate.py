"""Exact-match accuracy on tasks with checkable answers (the built-in dataset's held-out split)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from engine.core.events import ExactMatch, Progress
from engine.data.builtin_data import Example, is_correct
from engine.models.generate import greedy_replies

BATCH = 32  # prompts generated together
PROGRESS_INTERVAL_S = 0.5  # at most two progress events a second


class Tracker:
    """Examples done (fractions of a batch part-way through generation), as Progress events
    with an ETA from the rate so far, and whether to stop."""

    def __init__(
        self,
        task: str,
        total: int,
        emit: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.task, self.total, self.emit = task, total, emit
        self.should_stop = should_stop or (lambda: False)
        self.started = time.monotonic()
        self.last = -PROGRESS_INTERVAL_S
        self.stopped = False

    def update(self, done: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.emit is None or (not force and now - self.last < PROGRESS_INTERVAL_S):
            return
        self.last = now
        elapsed = now - self.started
        eta = elapsed / done * (self.total - done) if done > 0 else None
        self.emit(
            Progress(
                task=self.task,
                done=round(done, 2),
                total=self.total,
                unit="examples",
                elapsed_s=round(elapsed, 2),
                eta_s=None if eta is None else round(eta, 1),
            )
        )

    def criteria(self, start: int, size: int, prompt_len: int, max_new_tokens: int) -> Any:
        """A StoppingCriteriaList for one batch: called after every generated token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tracker = self

        class Watch(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                generated = input_ids.shape[1] - prompt_len
                tracker.update(start + size * min(generated / max_new_tokens, 1.0))
                tracker.stopped = tracker.stopped or tracker.should_stop()
                return torch.full(
                    (input_ids.shape[0],),
                    tracker.stopped,
                    dtype=torch.bool,
                    device=input_ids.device,
                )

        return StoppingCriteriaList([Watch()])


def exact_match(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    stage: str,
    chat_template: str | None = None,
    max_new_tokens: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExactMatch | None:
    """Greedy answers scored against the expected ones; None when ``should_stop`` turned true
    part-way (checked after every generated token, so a stop request ends it at once)."""
    if max_new_tokens is None:
        # A reply longer than the longest answer (plus its end marker) is wrong anyway, so
        # don't pay for generating it: this halves the untrained model's evaluation time.
        longest = max(
            len(tokenizer(ex.answer, add_special_tokens=False).input_ids) for ex in examples
        )
        max_new_tokens = longest + 3
    tracker = Tracker(f"exact match {stage} training", len(examples), progress, should_stop)
    tracker.update(0, force=True)
    replies: list[str] = []
    for start in range(0, len(examples), BATCH):
        if tracker.should_stop():  # asked before this batch's prompt pass, which cannot stop
            return None
        chunk = examples[start : start + BATCH]
        prompts = [ex.prompt for ex in chunk]
        criteria = tracker.criteria(
            start, len(chunk), _prompt_width(tokenizer, prompts, chat_template), max_new_tokens
        )
        replies += greedy_replies(
            model,
            tokenizer,
            prompts,
            chat_template=chat_template,
            max_new_tokens=max_new_tokens,
            batch_size=len(chunk),
            stopping_criteria=criteria,
        )
        if tracker.stopped or tracker.should_stop():
            return None
        tracker.update(start + len(chunk), force=True)
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


def _prompt_width(tokenizer: Any, prompts: list[str], chat_template: str | None) -> int:
    """Tokens of the left-padded prompt batch that greedy_replies builds."""
    from engine.models.generate import render_prompt

    texts = [
        render_prompt(tokenizer, [{"role": "user", "content": p}], chat_template) for p in prompts
    ]
    return max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)

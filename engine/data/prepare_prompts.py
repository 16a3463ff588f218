"""From a prompt dataset to the encoded prompts GRPO samples from, with the stats the dashboard
shows (the prompts' counterpart of engine.data.prepare_preference).

Prompts are rendered as TRL's GRPOTrainer renders them: a message list through the chat template
with the generation prompt, a text prompt as it is. A prompt longer than ``max_prompt_tokens``
(the context left once ``max_completion_length`` is kept free) loses its oldest tokens, and is
counted as truncated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.data.encode import IGNORE_INDEX, EncodedExample
from engine.data.prepare import DatasetStats, dataset_stats
from engine.data.prompts import Prompt, PromptDataset
from engine.data.templates import resolve_chat_template


@dataclass(frozen=True)
class PromptExample:
    """One prompt ready to sample from: its tokens, the dataset's 1-based row, the prompt as
    the rewards get it, and the row's other columns (answer, task, ...)."""

    prompt_ids: list[int]
    row: int
    prompt: Prompt
    columns: dict[str, Any]

    @property
    def input_ids(self) -> list[int]:
        """The tokens the loop counts for tokens/s (the prompt's; completions vary by step)."""
        return self.prompt_ids


@dataclass(frozen=True)
class PreparedPrompts:
    train: list[PromptExample]
    val: list[PromptExample]
    format: str
    chat_template: str
    stats: DatasetStats = dataclasses.field(repr=False)


def prepare_prompts(
    tokenizer: Any,
    dataset: PromptDataset,
    *,
    chat_template: str,
    max_length: int,
    max_completion_length: int,
) -> PreparedPrompts:
    """Every prompt encoded; no validation split (GRPO's signal is its rewards)."""
    template = resolve_chat_template(tokenizer, chat_template)
    budget = max(1, max_length - max_completion_length)
    examples, cut = [], []
    for row in dataset.rows:
        text = (
            row.prompt
            if isinstance(row.prompt, str)
            else tokenizer.apply_chat_template(
                row.prompt, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        )
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        cut.append(len(ids) > budget)
        ids = ids[-budget:]
        examples.append(PromptExample(ids, row.row, row.prompt, dict(row.columns)))
    sequences = [
        EncodedExample(ex.prompt_ids, [IGNORE_INDEX] * len(ex.prompt_ids), truncated=truncated)
        for ex, truncated in zip(examples, cut, strict=True)
    ]
    stats = dataset_stats(sequences, len(examples), 0, dataset.format, max_length)
    return PreparedPrompts(examples, [], dataset.format, template, stats)

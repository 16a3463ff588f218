"""From a preference dataset to encoded pairs split into train and validation, plus the
held-out pairs the run scores before and after training, and the stats the dashboard shows.

The pairs' counterpart of engine.data.prepare: everything wrong with the rows is found here,
before the weights load (load_preference names bad rows; encoding names rows too long).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.config.schema import BUILTIN_DATASET
from engine.data.encode import EncodedExample
from engine.data.preference import PreferenceDataset, encode_pairs, load_preference
from engine.data.prepare import DatasetStats, dataset_stats, val_indices_for
from engine.data.templates import resolve_chat_template


@dataclass(frozen=True)
class EncodedPair:
    """One pair as training sequences; ``row`` is the dataset's 1-based row."""

    chosen: EncodedExample
    rejected: EncodedExample
    row: int
    reference: tuple[float, float] | None = None  # the reference's (chosen, rejected) totals

    @property
    def input_ids(self) -> list[int]:
        """Every token the pair's forward pass reads (the loop counts tokens/s from these)."""
        return [*self.chosen.input_ids, *self.rejected.input_ids]


@dataclass(frozen=True)
class PreparedPairs:
    train: list[EncodedPair]
    val: list[EncodedPair]
    heldout: list[EncodedPair]  # scored for preference accuracy before and after training
    format: str
    chat_template: str
    stats: DatasetStats = dataclasses.field(repr=False)


@dataclass(frozen=True)
class PairSets:
    """The rows read and checked before any weights load: the pairs to train on (and validate
    with), and for the built-in skills their own held-out pairs."""

    dataset: PreferenceDataset
    heldout: PreferenceDataset | None


def load_pairs(path: str, split: str | None, *, task: str, max_rows: int | None) -> PairSets:
    """The dataset's pairs; for the built-in skills also their held-out split, which never
    shares a prompt with training."""
    dataset = load_preference(path, split, task=task, max_rows=max_rows)
    heldout = load_preference(path, "heldout", task=task) if path == BUILTIN_DATASET else None
    return PairSets(dataset, heldout)


def prepare_pairs(
    tokenizer: Any,
    sets: PairSets,
    *,
    path: str,
    chat_template: str,
    max_length: int,
    val_size: float,
    seed: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> PreparedPairs:
    """Encode and split the pairs. The held-out pairs are the built-in set's held-out split
    where there is one, else the validation pairs."""
    template = resolve_chat_template(tokenizer, chat_template)
    limits = {
        "max_prompt_length": max_prompt_length,
        "max_completion_length": max_completion_length,
    }

    def encoded(dataset: PreferenceDataset) -> list[EncodedPair]:
        sides = encode_pairs(dataset.pairs, tokenizer, template, max_length, path, **limits)
        return [
            EncodedPair(chosen.example, rejected.example, pair.row)
            for pair, (chosen, rejected) in zip(dataset.pairs, sides, strict=True)
        ]

    pairs, fmt = encoded(sets.dataset), sets.dataset.format
    val_indices = val_indices_for(len(pairs), val_size, seed, path)
    train = [pair for i, pair in enumerate(pairs) if i not in val_indices]
    val = [pair for i, pair in enumerate(pairs) if i in val_indices]
    heldout = encoded(sets.heldout) if sets.heldout is not None else val
    sequences = [side for pair in pairs for side in (pair.chosen, pair.rejected)]
    stats = dataclasses.replace(
        dataset_stats(sequences, len(train), 2 * len(val), fmt, max_length),
        rows=len(pairs),
        train_rows=len(train),
        val_rows=len(val),
    )
    return PreparedPairs(train, val, heldout, fmt, template, stats)

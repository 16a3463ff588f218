"""From a preference dataset to encoded pairs split into train and validation, plus the
held-out pairs the run scores before and after training, and the stats the dashboard shows.

The pairs' counterpart of engine.data.prepare: everything wrong with the rows is found here,
before the weights load (load_preference names bad rows; encoding names rows too long).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config.schema import BUILTIN_DATASET
from engine.data.encode import EncodedExample
from engine.data.preference import (
    PreferenceDataset,
    PreferencePair,
    UnpairedExample,
    encode_pairs,
    load_preference,
)
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

    def sides(self) -> tuple[EncodedExample, EncodedExample]:
        """The two sequences scored together, in the order ``reference`` holds them."""
        return self.chosen, self.rejected


@dataclass(frozen=True)
class EncodedUnpaired:
    """One KTO example: its prompt and completion, and the same prompt with another example's
    completion (``kl``: KTO estimates the policy's KL from the reference on such mismatched
    sequences, TRL's KL_completion)."""

    completion: EncodedExample
    kl: EncodedExample
    desirable: bool
    row: int
    reference: tuple[float, float] | None = None  # the reference's (completion, kl) totals

    @property
    def input_ids(self) -> list[int]:
        return [*self.completion.input_ids, *self.kl.input_ids]

    def sides(self) -> tuple[EncodedExample, EncodedExample]:
        return self.completion, self.kl


# What a preference run trains on: pairs, or KTO's examples; both score two sequences.
TwoSided = EncodedPair | EncodedUnpaired


@dataclass(frozen=True)
class PreparedPairs:
    train: list[TwoSided]
    val: list[TwoSided]
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
    task: str,
    chat_template: str,
    max_length: int,
    val_size: float,
    seed: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> PreparedPairs:
    """Encode and split the pairs (KTO: its unpaired examples). The held-out pairs are the
    built-in set's held-out split where there is one, else the validation pairs (none for
    KTO, whose validation examples are unpaired)."""
    template = resolve_chat_template(tokenizer, chat_template)
    limits = {
        "max_prompt_length": max_prompt_length,
        "max_completion_length": max_completion_length,
    }

    def encode(pairs: list[PreferencePair]) -> list[tuple[EncodedExample, EncodedExample]]:
        encoded = encode_pairs(pairs, tokenizer, template, max_length, path, **limits)
        return [(first.example, second.example) for first, second in encoded]

    def as_pairs(dataset: PreferenceDataset) -> list[EncodedPair]:
        sides = encode(dataset.pairs)
        return [
            EncodedPair(c, r, pair.row) for pair, (c, r) in zip(dataset.pairs, sides, strict=True)
        ]

    rows: list[Any] = sets.dataset.unpaired if task == "kto" else as_pairs(sets.dataset)
    val_indices = val_indices_for(len(rows), val_size, seed, path)
    train: list[Any] = [row for i, row in enumerate(rows) if i not in val_indices]
    val: list[Any] = [row for i, row in enumerate(rows) if i in val_indices]
    heldout = as_pairs(sets.heldout) if sets.heldout is not None else []
    if task == "kto":
        # Each split's KL sequences pair its own examples: validation never reads training's.
        train, val = kto_examples(train, seed, encode), kto_examples(val, seed, encode)
    elif sets.heldout is None:
        heldout = val
    sequences = [side for example in [*train, *val] for side in example.sides()]
    stats = dataclasses.replace(
        dataset_stats(sequences, len(train), 2 * len(val), sets.dataset.format, max_length),
        rows=len(rows),
        train_rows=len(train),
        val_rows=len(val),
    )
    return PreparedPairs(train, val, heldout, sets.dataset.format, template, stats)


def kto_examples(
    examples: list[UnpairedExample],
    seed: int,
    encode: Callable[[list[PreferencePair]], list[tuple[EncodedExample, EncodedExample]]],
) -> list[EncodedUnpaired]:
    """KTO's examples with their KL sequences: each prompt with the completion of the example
    before it in a seeded shuffle (TRL rotates the completions within each batch; a fixed
    partner lets the reference's KL totals be scored once, before training)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    partner = {order[k]: order[k - 1] for k in range(len(order))}
    mismatched = [
        PreferencePair(ex.prompt, ex.completion, examples[partner[i]].completion, ex.row)
        for i, ex in enumerate(examples)
    ]
    return [
        EncodedUnpaired(completion, kl, ex.desirable, ex.row)
        for ex, (completion, kl) in zip(examples, encode(mismatched), strict=True)
    ]

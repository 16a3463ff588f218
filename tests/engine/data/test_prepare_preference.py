"""Pairs and KTO examples encoded and split for a run: the built-in set's own held-out pairs,
validation pairs otherwise, and KTO's KL sequences (each prompt with another completion)."""

from __future__ import annotations

from typing import Any

from engine.config.schema import BUILTIN_DATASET
from engine.data.encode import IGNORE_INDEX
from engine.data.prepare_preference import load_pairs, prepare_pairs


def prepared(tokenizer: Any, task: str, path: str = BUILTIN_DATASET, val_size: float = 0):
    sets = load_pairs(path, "train[:24]", task=task, max_rows=None)
    return prepare_pairs(
        tokenizer,
        sets,
        path=path,
        task=task,
        chat_template="auto",
        max_length=256,
        val_size=val_size,
        seed=0,
    )


def response_ids(example: Any) -> list[int]:
    return [label for label in example.labels if label != IGNORE_INDEX]


def prompt_ids(example: Any) -> list[int]:
    return [
        token
        for token, label in zip(example.input_ids, example.labels, strict=True)
        if label == IGNORE_INDEX
    ]


def test_the_builtin_pairs_are_held_out_by_their_own_split(smol_tokenizer: Any) -> None:
    pairs = prepared(smol_tokenizer, "dpo", val_size=4)
    assert (len(pairs.train), len(pairs.val), len(pairs.heldout)) == (20, 4, 42)
    train_prompts = {tuple(prompt_ids(pair.chosen)) for pair in pairs.train}
    assert not train_prompts & {tuple(prompt_ids(pair.chosen)) for pair in pairs.heldout}
    assert pairs.stats.rows == 24 and pairs.stats.train_rows == 20 and pairs.stats.val_rows == 4
    assert all(response_ids(p.chosen) != response_ids(p.rejected) for p in pairs.train)


def test_kto_examples_pair_each_prompt_with_another_completion(smol_tokenizer: Any) -> None:
    kto = prepared(smol_tokenizer, "kto", val_size=6)
    # 24 pairs unpaired: 48 examples, half desirable; the built-in held-out pairs for accuracy.
    assert (len(kto.train), len(kto.val), len(kto.heldout)) == (42, 6, 42)
    assert sum(ex.desirable for ex in kto.train + kto.val) == 24
    for part in (kto.train, kto.val):
        completions = [response_ids(ex.completion) for ex in part]
        for ex in part:
            assert prompt_ids(ex.kl) == prompt_ids(ex.completion)
            assert response_ids(ex.kl) in completions  # another example's of the same split
        # Each completion serves as exactly one KL sequence: a permutation, not a repeat.
        assert sorted(response_ids(ex.kl) for ex in part) == sorted(completions)
    mismatched = sum(response_ids(ex.kl) != response_ids(ex.completion) for ex in kto.train)
    assert mismatched >= len(kto.train) - 2
    again = prepared(smol_tokenizer, "kto", val_size=6)
    assert [ex.kl.input_ids for ex in again.train] == [ex.kl.input_ids for ex in kto.train]

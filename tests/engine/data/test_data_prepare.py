from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import DatasetError
from engine.data.encode import IGNORE_INDEX, EncodedExample
from engine.data.prepare import pack_examples, prepare_dataset
from engine.data.templates import CHAT_TEMPLATES

DATA = Path(__file__).parents[2] / "data"
ALPACA = str(DATA / "alpaca_small.jsonl")


def prepare(tokenizer: Any, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "path": ALPACA,
        "split": "train",
        "fmt": "auto",
        "chat_template": "chatml",
        "train_on": "responses",
        "max_length": 256,
        "packing": False,
        "val_size": 0,
        "seed": 0,
    }
    options.update(overrides)
    return prepare_dataset(tokenizer, **options)


def test_prepare_alpaca_file(smol_tokenizer: Any) -> None:
    prepared = prepare(smol_tokenizer, val_size=0.2)
    assert prepared.format == "alpaca"
    assert prepared.chat_template == CHAT_TEMPLATES["chatml"]
    assert (len(prepared.train), len(prepared.val)) == (8, 2)
    stats = prepared.stats
    assert (stats.rows, stats.train_rows, stats.val_rows) == (10, 8, 2)
    examples = prepared.train + prepared.val
    assert stats.tokens == sum(len(ex) for ex in examples)
    assert stats.trained_tokens == sum(ex.num_trained for ex in examples)
    assert stats.max_length == max(len(ex) for ex in examples)
    assert stats.truncated == 0 and stats.format == "alpaca" and stats.max_seq_length == 256
    assert len(stats.length_histogram) == 10 and stats.length_histogram[-1][0] == 256
    assert sum(count for _, count in stats.length_histogram) == 10
    assert json.loads(json.dumps(dataclasses.asdict(stats)))["rows"] == 10


def test_val_split_is_deterministic_and_seeded(smol_tokenizer: Any) -> None:
    first = prepare(smol_tokenizer, val_size=3, seed=1)
    again = prepare(smol_tokenizer, val_size=3, seed=1)
    assert [ex.input_ids for ex in first.val] == [ex.input_ids for ex in again.val]
    others = [prepare(smol_tokenizer, val_size=3, seed=s).val for s in range(2, 6)]
    assert any([ex.input_ids for ex in v] != [ex.input_ids for ex in first.val] for v in others)
    assert len(first.val) == 3 and len(first.train) == 7


@pytest.mark.parametrize(
    ("val_size", "message"),
    [
        (10, "leaving none to train on"),
        (-1, "val_size must be"),
        (True, "val_size must be"),
        (1.5, "neither a fraction"),
    ],
)
def test_bad_val_size(smol_tokenizer: Any, val_size: Any, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        prepare(smol_tokenizer, val_size=val_size)


def test_records_and_max_rows(smol_tokenizer: Any) -> None:
    records = [{"text": f"Document number {i}."} for i in range(6)]
    prepared = prepare(smol_tokenizer, path="inline", records=records, max_rows=4, train_on="all")
    assert prepared.format == "text" and prepared.stats.rows == 4
    first = prepared.train[0]
    assert smol_tokenizer.decode(first.input_ids) == "Document number 0.<|im_end|>"


def test_rows_without_trained_tokens_are_refused(smol_tokenizer: Any) -> None:
    long_prompt = "word " * 60
    records = [{"instruction": "Say hi.", "output": "Hi."}] * 2 + [
        {"instruction": long_prompt, "output": "Hi."}
    ] * 12
    with pytest.raises(DatasetError) as info:
        prepare(smol_tokenizer, path="data/chat.jsonl", records=records, max_length=40)
    message = info.value.message
    assert message.startswith("chat.jsonl: 12 rows would train on no tokens")
    assert "rows 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 (and 2 more)" in message
    assert "max_seq_length" in (info.value.hint or "")


def test_unknown_format_and_template(smol_tokenizer: Any) -> None:
    with pytest.raises(DatasetError, match="Unknown dataset format 'chat'"):
        prepare(smol_tokenizer, fmt="chat")
    with pytest.raises(DatasetError, match="Did you mean 'chatml'"):
        prepare(smol_tokenizer, chat_template="chatlm")


def fake(length: int, tag: int) -> EncodedExample:
    ids = [tag * 100 + i for i in range(length)]
    return EncodedExample(input_ids=ids, labels=[IGNORE_INDEX, *ids[1:]], num_trained=length - 1)


def test_pack_examples_first_fit_in_order() -> None:
    examples = [fake(6, 1), fake(5, 2), fake(4, 3), fake(3, 4), fake(2, 5)]
    packed = pack_examples(examples, 10)
    assert [p.seq_lengths for p in packed] == [[6, 4], [5, 3, 2]]
    second = packed[1]
    assert second.input_ids == examples[1].input_ids + examples[3].input_ids + examples[4].input_ids
    assert second.position_ids == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]
    # No document's first token is a target, so none is predicted from the document before it.
    assert [second.labels[i] for i in (0, 5, 8)] == [IGNORE_INDEX] * 3
    assert second.num_trained == 4 + 2 + 1


def test_prepare_with_packing(smol_tokenizer: Any) -> None:
    plain = prepare(smol_tokenizer)
    packed = prepare(smol_tokenizer, packing=True, max_length=128)
    assert len(packed.train) < len(plain.train)
    assert packed.stats.train_sequences == len(packed.train)
    assert all(len(seq) <= 128 for seq in packed.train)
    assert sum(len(s.seq_lengths or []) for s in packed.train) == 10
    flat = [t for seq in packed.train for t in seq.input_ids]
    assert sorted(flat) == sorted(t for ex in plain.train for t in ex.input_ids)
    assert sum(s.num_trained for s in packed.train) == plain.stats.trained_tokens
    for seq in packed.train:
        assert seq.seq_lengths is not None and seq.position_ids is not None
        assert sum(seq.seq_lengths) == len(seq.input_ids) == len(seq.position_ids)
        start = 0
        for length in seq.seq_lengths:
            assert seq.position_ids[start] == 0 and seq.labels[start] == IGNORE_INDEX
            start += length


def test_float_zero_val_size_means_no_validation_split(smol_tokenizer: Any) -> None:
    # Presets hold val_size as a float; 0.0 must not round up to one held-out row.
    assert prepare(smol_tokenizer, val_size=0.0).val == []

"""From a dataset path to encoded train/val examples plus the stats the dashboard shows.

Everything that can be wrong with the data is found here, before any weights load: unreadable
rows, unknown formats, and rows that would train on nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from engine.core.errors import DatasetError
from engine.data.encode import (
    IGNORE_INDEX,
    EncodedExample,
    TrainOn,
    encode_conversation,
    encode_text,
)
from engine.data.formats import FORMATS, describe_format, detect_format, to_conversations
from engine.data.sources import display_name, load_records, row_number
from engine.data.templates import resolve_chat_template

HISTOGRAM_BUCKETS = 10
MAX_LISTED_ROWS = 10


@dataclass(frozen=True)
class DatasetStats:
    """Summary for the dataset-stats event; ``dataclasses.asdict`` gives its JSON form.

    ``max_length`` is the longest example in tokens (after truncation); ``max_seq_length`` is the
    configured limit. Lengths are per example, before packing; ``train_sequences`` is how many
    sequences training will see (fewer than ``train_rows`` when packing).
    """

    rows: int
    train_rows: int
    val_rows: int
    tokens: int
    trained_tokens: int
    max_length: int
    truncated: int
    length_histogram: list[tuple[int, int]]
    mean_length: float
    format: str
    max_seq_length: int = 0
    train_sequences: int = 0


@dataclass(frozen=True)
class PreparedDataset:
    train: list[EncodedExample]
    val: list[EncodedExample]
    format: str
    chat_template: str
    stats: DatasetStats = field(repr=False)


def prepare_dataset(
    tokenizer: Any,
    *,
    path: str,
    split: str | None,
    fmt: str,
    chat_template: str,
    train_on: TrainOn,
    max_length: int,
    packing: bool,
    val_size: float,
    seed: int,
    max_rows: int | None = None,
    records: list[dict[str, Any]] | None = None,
) -> PreparedDataset:
    """Load (or take ``records``), validate, encode, split and optionally pack a dataset."""
    if records is None:
        records = load_records(path, split)
    if max_rows is not None:
        records = records[:max_rows]
    if fmt == "auto":
        fmt = detect_format(records, path)
    elif fmt not in FORMATS:
        raise DatasetError(
            f"Unknown dataset format '{fmt}'.", hint=f"Use auto or one of {', '.join(FORMATS)}."
        )
    if fmt == "text" and train_on == "responses":
        # Plain text has no replies to pick out: training on every token instead would be a
        # different run from the one asked for, so say so instead.
        raise DatasetError(
            f"{display_name(path)}: the rows are {describe_format('text')}, which has no "
            "assistant replies, but dataset.train_on is responses (loss on replies only).",
            hint="Set dataset.train_on: all to train on every token, or give chat rows "
            "(messages, conversations, or instruction/output).",
        )
    conversations = to_conversations(records, fmt, path)
    template = resolve_chat_template(tokenizer, chat_template)
    examples = [
        encode_text(tokenizer, conv, max_length)
        if isinstance(conv, str)
        else encode_conversation(tokenizer, conv, template, train_on, max_length)
        for conv in conversations
    ]
    empty = [row_number(records, i) for i, ex in enumerate(examples) if ex.num_trained == 0]
    if empty:
        raise _untrained_error(path, empty, max_length)
    val_indices = val_indices_for(len(examples), val_size, seed, path)
    train = [ex for i, ex in enumerate(examples) if i not in val_indices]
    val = [ex for i, ex in enumerate(examples) if i in val_indices]
    if packing:
        train, val = pack_examples(train, max_length), pack_examples(val, max_length)
    stats = dataset_stats(examples, len(train), len(val_indices), fmt, max_length)
    return PreparedDataset(train=train, val=val, format=fmt, chat_template=template, stats=stats)


def _untrained_error(path: str, rows: list[int], max_length: int) -> DatasetError:
    listed = ", ".join(map(str, rows[:MAX_LISTED_ROWS]))
    more = f" (and {len(rows) - MAX_LISTED_ROWS} more)" if len(rows) > MAX_LISTED_ROWS else ""
    plural = "s" if len(rows) > 1 else ""
    return DatasetError(
        f"{display_name(path)}: {len(rows)} row{plural} would train on no tokens: "
        f"row{plural} {listed}{more}. "
        f"Either the assistant reply was cut off by max_seq_length ({max_length}) or there is "
        "nothing to learn in them.",
        hint="Raise model.max_seq_length, shorten or remove those rows, or set train_on: all.",
    )


def val_indices_for(n: int, val_size: float, seed: int, path: str) -> set[int]:
    """Indices of the validation rows: a seeded shuffle, so the split is the same every run."""
    if isinstance(val_size, bool) or not isinstance(val_size, int | float) or val_size < 0:
        raise DatasetError(
            f"val_size must be 0, a fraction in (0, 1) or a row count, got {val_size!r}.",
            hint="For example val_size: 0.01 (1% of rows) or val_size: 200.",
        )
    if isinstance(val_size, float) and not val_size < 1:
        if not val_size.is_integer():
            raise DatasetError(
                f"val_size {val_size} is neither a fraction below 1 nor a whole row count.",
                hint="For example val_size: 0.01 (1% of rows) or val_size: 200.",
            )
        val_size = int(val_size)
    if val_size == 0:
        return set()
    count = val_size if isinstance(val_size, int) else max(1, round(n * val_size))
    if count >= n:
        raise DatasetError(
            f"{display_name(path)}: val_size {val_size} takes {count} of {n} rows, "
            "leaving none to train on.",
            hint="Lower dataset.val_size or add rows.",
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return set(order[:count])


def pack_examples(examples: list[EncodedExample], max_length: int) -> list[EncodedExample]:
    """First-fit packing of whole examples, in order, into sequences of at most ``max_length``.

    Each example keeps ``labels[0] == -100`` (see encode.py), so after the trainer's shift no
    document's first token is predicted from the previous document. Positions restart at 0 per
    document and ``seq_lengths`` lists document lengths for a per-document attention mask.
    """
    bins: list[list[EncodedExample]] = []
    free = _FreeTree(len(examples), max_length)
    for example in examples:
        slot = free.first_fit(len(example))  # examples are truncated, so one always fits
        if slot == len(bins):
            bins.append([])
        bins[slot].append(example)
        free.use(slot, len(example))
    return [_join(docs) for docs in bins]


def _join(docs: list[EncodedExample]) -> EncodedExample:
    ids = [t for doc in docs for t in doc.input_ids]
    labels = [t for doc in docs for t in doc.labels]
    return EncodedExample(
        input_ids=ids,
        labels=labels,
        truncated=any(doc.truncated for doc in docs),
        num_trained=sum(1 for t in labels if t != IGNORE_INDEX),
        position_ids=[p for doc in docs for p in range(len(doc))],
        seq_lengths=[len(doc) for doc in docs],
    )


class _FreeTree:
    """Max segment tree over the bins' free space: finds the first bin that fits in O(log n)."""

    def __init__(self, bins: int, max_length: int) -> None:
        self.size = 1
        while self.size < max(bins, 1):
            self.size *= 2
        # One leaf per possible bin (never more bins than examples), each empty to start.
        self.tree = [max_length] * (2 * self.size)

    def first_fit(self, length: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= length else 2 * node + 1
        return node - self.size

    def use(self, slot: int, length: int) -> None:
        node = slot + self.size
        self.tree[node] -= length
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2


def dataset_stats(
    examples: list[EncodedExample], train_sequences: int, val_rows: int, fmt: str, max_len: int
) -> DatasetStats:
    lengths = [len(ex) for ex in examples]
    bounds = sorted({max(1, -(-max_len * k // HISTOGRAM_BUCKETS)) for k in range(1, 11)})
    histogram = [(bound, 0) for bound in bounds]
    for length in lengths:
        index = next(i for i, bound in enumerate(bounds) if length <= bound)
        histogram[index] = (bounds[index], histogram[index][1] + 1)
    return DatasetStats(
        rows=len(examples),
        train_rows=len(examples) - val_rows,
        val_rows=val_rows,
        tokens=sum(lengths),
        trained_tokens=sum(ex.num_trained for ex in examples),
        max_length=max(lengths),
        truncated=sum(1 for ex in examples if ex.truncated),
        length_histogram=histogram,
        mean_length=round(sum(lengths) / len(lengths), 2),
        format=fmt,
        max_seq_length=max_len,
        train_sequences=train_sequences,
    )

"""The real token lengths of a preset's dataset, measured without torch or transformers.

`finetty estimate`, the wizard and the review screen must answer in well under a second, and
importing transformers loads torch (5+ s on a 2-core box). So the model's ``tokenizer.json`` is
read with the Rust ``tokenizers`` library and its chat template rendered with jinja2 the way
transformers' ``apply_chat_template`` does, and the rows go through the engine's own encoding
(engine.data.prepare_dataset): the same truncation, assistant-only labels and packing as a run.
Where no tokenizer file or no local dataset is at hand (a hub dataset, a model not yet
downloaded), ``measure`` returns None and the estimator assumes max_seq_length, and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.config.derived import dataset_prep
from engine.core.errors import DatasetError, FinettyError

SAMPLE_ROWS = 2000  # rows tokenized for an estimate; a bigger dataset is scaled from them


@dataclass(frozen=True)
class DatasetLengths:
    """Token lengths of the sequences a run would train on (after truncation and packing)."""

    source: str  # the dataset path
    rows: int  # rows in the dataset (after max_rows)
    measured_rows: int  # rows tokenized (all of them, or the first SAMPLE_ROWS)
    train_lengths: tuple[int, ...]  # lengths of the measured training sequences
    train_sequences: int  # training sequences of the whole dataset (scaled if sampled)
    longest: int  # longest measured row, before truncation to max_seq_length
    truncated: int  # measured rows longer than max_seq_length

    @property
    def sampled(self) -> bool:
        return self.measured_rows < self.rows


def tokenizer_dir(name_or_path: str) -> Path | None:
    """The folder holding the model's tokenizer.json, found offline, or None."""
    from engine.models.embedded import converted_dir, embedded_name, is_embedded
    from engine.plan.shapes import cached_config

    if is_embedded(name_or_path):
        try:
            folder = converted_dir(embedded_name(name_or_path))
        except FinettyError:
            return None
    else:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir() and name_or_path.count("/") == 1:
            config = cached_config(name_or_path)
            folder = config.parent if config is not None else folder
    return folder if (folder / "tokenizer.json").is_file() else None


class LightTokenizer:
    """The part of a transformers fast tokenizer that engine.data uses, over tokenizer.json."""

    is_fast = True

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        config = (
            json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        )
        self.special = {
            key: _token_text(config.get(key))
            for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        self.eos_token = self.special["eos_token"]
        self.eos_token_id = self._tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():  # transformers 5 keeps it in its own file
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        self.chat_template = template

    def __call__(
        self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False
    ) -> dict[str, list[Any]]:
        encoded = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        out: dict[str, list[Any]] = {"input_ids": list(encoded.ids)}
        if return_offsets_mapping:
            out["offset_mapping"] = list(encoded.offsets)
        return out

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        chat_template: str | None = None,
        tokenize: bool = False,
        add_generation_prompt: bool = False,
    ) -> str:
        if tokenize:
            raise ValueError("LightTokenizer renders text only")
        template = _compile(chat_template or self.chat_template or "")
        return template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.special
        )


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # older configs: {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


_COMPILED: dict[str, Any] = {}


def _compile(template: str) -> Any:
    """A template compiled as transformers compiles it: sandboxed, trim_blocks and lstrip_blocks,
    loop controls, ``tojson``, ``raise_exception`` and ``strftime_now``; a ``{% generation %}``
    block renders its body."""
    if template not in _COMPILED:
        import jinja2
        from jinja2 import nodes
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class Generation(Extension):
            tags = {"generation"}  # jinja2 reads the tag names from this class attribute

            def parse(self, parser: Any) -> Any:
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return nodes.Scope(body, lineno=lineno)

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(
            value: Any,
            ensure_ascii: bool = False,
            indent: int | None = None,
            separators: Any = None,
            sort_keys: bool = False,
        ) -> str:
            return json.dumps(
                value,
                ensure_ascii=ensure_ascii,
                indent=indent,
                separators=separators,
                sort_keys=sort_keys,
            )

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _COMPILED[template] = env.from_string(template)
    return _COMPILED[template]


def measure(preset: Any) -> DatasetLengths | None:
    """The token lengths of ``preset``'s dataset, or None where they cannot be measured offline
    and cheaply (a hub dataset, no tokenizer file). Bad rows raise the engine's DatasetError,
    exactly as the run would."""
    from jinja2 import TemplateError

    from engine.config.schema import BUILTIN_DATASET
    from engine.data import builtin_data, load_records

    data = preset.dataset
    if data.path == BUILTIN_DATASET:
        records = builtin_data.records("train")
    elif Path(data.path).expanduser().is_file():
        records = load_records(data.path, data.split)
    else:
        return None
    folder = tokenizer_dir(preset.model.name_or_path)
    if folder is None:
        return None
    if data.max_rows is not None:
        records = records[: data.max_rows]
    rows = len(records)
    sample = records[:SAMPLE_ROWS]
    try:
        tokenizer = LightTokenizer(folder)
    except Exception:  # noqa: BLE001 - a tokenizer.json the Rust library cannot read: not measured
        return None
    try:
        prepared = _prepare(preset, tokenizer, sample, rows)
    except DatasetError as exc:
        if isinstance(exc.__cause__, TemplateError):
            return None  # a template this renderer does not support: the run's may, so no verdict
        raise  # a bad row: the run would refuse it the same way
    lengths = tuple(len(example) for example in prepared.train)
    scale = rows / max(len(sample), 1)
    return DatasetLengths(
        source=data.path,
        rows=rows,
        measured_rows=len(sample),
        train_lengths=lengths,
        train_sequences=max(1, round(len(lengths) * scale)),
        longest=prepared.stats.max_length,
        truncated=prepared.stats.truncated,
    )


def _prepare(preset: Any, tokenizer: LightTokenizer, sample: list[Any], rows: int) -> Any:
    from engine.data import prepare_dataset

    # The sample is cut to max_rows already, and its validation share scaled to its size.
    prep = {**dataset_prep(preset), "max_rows": None}
    prep["val_size"] = _sample_val_size(preset.dataset.val_size, rows)
    return prepare_dataset(tokenizer, **prep, records=sample)


def _sample_val_size(val_size: float, rows: int) -> float:
    """The validation split of a sample: a count (>= 1) of the whole dataset becomes its
    fraction, so a sample loses as big a share to validation as the dataset does."""
    if val_size >= 1 and rows > SAMPLE_ROWS:
        return val_size / rows
    return val_size


def padded_width(lengths: tuple[int, ...], micro_batch: int, seed: int) -> float:
    """Mean width of a micro-batch (the trainer right-pads to its longest row) over one epoch
    in the trainer's own shuffled order."""
    from engine.plan.schedule import epoch_order

    if not lengths:
        return 0.0
    order = epoch_order(len(lengths), seed, 0)
    widths = [
        max(lengths[i] for i in order[start : start + micro_batch])
        for start in range(0, len(order), micro_batch)
    ]
    return sum(widths) / len(widths)

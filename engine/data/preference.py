"""Preference datasets for DPO, ORPO, SimPO and KTO: detected, checked row by row, encoded.

Four layouts, as TRL's trainers and the common hub sets write them:
- ``text``: ``prompt``, ``chosen`` and ``rejected`` as strings (TRL's standard form);
- ``conversational``: the same columns as message lists (TRL's conversational form; the prompt
  may also be a string);
- ``shared_prefix``: ``chosen`` and ``rejected`` each a whole conversation, the prompt being
  what they share (mlabonne/orpo-dpo-mix-40k's message lists, whose own ``prompt`` column is
  ignored; Anthropic HH's "\\n\\nHuman: ... \\n\\nAssistant: ..." strings), split at the first
  message that differs;
- ``unpaired``: KTO's ``prompt``, ``completion`` and boolean ``label``.
Every prompt becomes a message list and every response one or more turns starting with the
assistant's, so one chat template encodes them all and the loss mask covers the response
tokens only (engine.data.encode's spans, limited to the turns after the prompt). Bad rows
exit 2 naming every row: a missing side, chosen equal to rejected, an empty response, and (at
encoding) a prompt that alone fills the length limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.core.errors import DatasetError
from engine.data import builtin_preference
from engine.data.encode import (
    IGNORE_INDEX,
    EncodedExample,
    assistant_spans,
    check_max_length,
    label_spans,
    render,
    tokenize_with_offsets,
)
from engine.data.formats import RowProblem, as_list, first_row, keys_of, parse_messages, text_field
from engine.data.sources import bad_rows_error, display_name, load_task_records, row_number

Message = dict[str, str]

PREFERENCE_FORMATS = ("text", "conversational", "shared_prefix", "unpaired")
_DESCRIPTIONS = {
    "text": "prompt/chosen/rejected as text",
    "conversational": "prompt/chosen/rejected as messages (TRL's conversational form)",
    "shared_prefix": "chosen/rejected conversations, split where they first differ",
    "unpaired": "prompt/completion/label (KTO's unpaired form)",
}
_HINT = (
    "Preference rows need 'prompt', 'chosen' and 'rejected' (text or {role, content} lists), "
    "or 'chosen' and 'rejected' whole conversations sharing their start, or for KTO "
    "'prompt', 'completion' and a true/false 'label'."
)
# Anthropic HH's turns: "\n\nHuman: ..." and "\n\nAssistant: ...".
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
# 1 and 0 (and 1.0, numpy's bools) hash as True and False, so they are accepted too.
_LABELS = {True: True, False: False, "true": True, "false": False}


@dataclass(frozen=True)
class PreferencePair:
    """One pair: the shared prompt, then each side's response turns; ``row`` is 1-based."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    row: int


@dataclass(frozen=True)
class UnpairedExample:
    """One KTO example: a prompt, a response, and whether it is desirable."""

    prompt: list[Message]
    completion: list[Message]
    desirable: bool
    row: int


@dataclass(frozen=True)
class PreferenceDataset:
    pairs: list[PreferencePair]
    unpaired: list[UnpairedExample]
    format: str


@dataclass(frozen=True)
class EncodedResponse:
    """A prompt and one response as a training sequence; ``prompt_tokens`` are never trained."""

    example: EncodedExample
    prompt_tokens: int


def describe_preference_format(fmt: str) -> str:
    """One line for the "detected format" message, as the SFT loader's describe_format."""
    return _DESCRIPTIONS.get(fmt, fmt)


def detect_preference_format(records: list[dict[str, Any]], source: str) -> str:
    """The layout of the first row's columns; other rows are checked against it."""
    row = first_row(records, source)
    if {"completion", "label"} <= set(row) and "prompt" in row:
        return "unpaired"
    if "chosen" in row and "rejected" in row:
        chosen = as_list(row["chosen"])
        if chosen is not None:
            whole = any(isinstance(m, dict) and m.get("role") == "user" for m in chosen)
            return "shared_prefix" if whole or "prompt" not in row else "conversational"
        if "prompt" not in row:
            return "shared_prefix"
        return "conversational" if as_list(row["prompt"]) is not None else "text"
    where = f"{display_name(source)}, row {row_number(records, 0)}"
    raise DatasetError(
        f"{where}: no preference columns among its keys ({keys_of(row)}).", hint=_HINT
    )


def to_pairs(records: list[dict[str, Any]], fmt: str, source: str) -> list[PreferencePair]:
    """Every row of a paired layout, validated; one DatasetError names every bad row."""
    return _collect(records, source, lambda record, row: _pair(record, fmt, row))


def to_unpaired(records: list[dict[str, Any]], source: str) -> list[UnpairedExample]:
    """Every row of KTO's layout, validated; one DatasetError names every bad row."""
    return _collect(records, source, _unpaired)


def unpair(pairs: list[PreferencePair]) -> list[UnpairedExample]:
    """Pairs as KTO examples: chosen desirable, rejected not (TRL's unpair_preference_dataset)."""
    out: list[UnpairedExample] = []
    for pair in pairs:
        out.append(UnpairedExample(pair.prompt, pair.chosen, True, pair.row))
        out.append(UnpairedExample(pair.prompt, pair.rejected, False, pair.row))
    return out


def load_preference(
    path: str,
    split: str | None = "train",
    *,
    task: str = "dpo",
    max_rows: int | None = None,
) -> PreferenceDataset:
    """Rows of a preference dataset (a file, a hub dataset, or the built-in skills as pairs).
    KTO also takes paired rows, unpaired as TRL does; the paired tasks refuse KTO's layout."""
    records = load_task_records(path, split, builtin_preference.records, max_rows)
    fmt = detect_preference_format(records, path)
    if fmt == "unpaired":
        if task != "kto":
            raise DatasetError(
                f"{display_name(path)} holds unpaired prompt/completion/label rows, which only "
                f"KTO trains on; task: {task} needs a chosen and a rejected response per prompt.",
                hint="Set task: kto, or use a dataset with prompt/chosen/rejected.",
            )
        return PreferenceDataset(pairs=[], unpaired=to_unpaired(records, path), format=fmt)
    pairs = to_pairs(records, fmt, path)
    return PreferenceDataset(
        pairs=pairs, unpaired=unpair(pairs) if task == "kto" else [], format=fmt
    )


def encode_response(
    tokenizer: Any,
    prompt: list[Message],
    response: list[Message],
    chat_template: str,
    max_length: int,
    *,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> EncodedResponse:
    """Render prompt + response with the chat template and label the response's assistant
    turns only (each reply and its end-of-turn marker, as for SFT). A prompt that alone takes
    ``max_length`` tokens (or more than ``max_prompt_length``) raises RowProblem; a long
    response is cut to ``max_completion_length`` tokens, then the whole to ``max_length``."""
    check_max_length(max_length)
    messages = prompt + response
    full = render(tokenizer, messages, chat_template, generation=False)
    prompt_text = render(tokenizer, prompt, chat_template, generation=True)
    spans = [
        span
        for span in assistant_spans(tokenizer, messages, chat_template, full)
        if span[0] >= len(prompt_text)
    ]
    ids, offsets = tokenize_with_offsets(tokenizer, full, max_length)
    prompt_tokens = sum(1 for start, _end in offsets if start < len(prompt_text))
    # At least one response token must fit, whatever max_prompt_length allows.
    prompt_limit = max_prompt_length is not None and max_prompt_length < max_length
    limit = max_prompt_length if prompt_limit else max_length - 1
    if prompt_tokens > limit:
        name = "max_prompt_length" if prompt_limit else "model.max_seq_length"
        raise RowProblem(
            f"the prompt alone is {prompt_tokens}{'+' if prompt_tokens >= max_length else ''} "
            f"tokens, past {name} ({limit if prompt_limit else max_length}), leaving no room "
            "for the response"
        )
    labels = label_spans(ids, offsets, spans)
    keep = max_length
    if max_completion_length is not None:
        keep = min(keep, prompt_tokens + max_completion_length)
    truncated = len(ids) > keep
    ids, labels = ids[:keep], labels[:keep]
    labels[0] = IGNORE_INDEX
    trained = sum(1 for label in labels if label != IGNORE_INDEX)
    if not trained:
        raise RowProblem("the response has no tokens to train on once encoded")
    example = EncodedExample(input_ids=ids, labels=labels, truncated=truncated, num_trained=trained)
    return EncodedResponse(example=example, prompt_tokens=prompt_tokens)


def encode_pairs(
    pairs: list[PreferencePair],
    tokenizer: Any,
    chat_template: str,
    max_length: int,
    source: str,
    **limits: int | None,
) -> list[tuple[EncodedResponse, EncodedResponse]]:
    """(chosen, rejected) of every pair; one DatasetError names every row too long to train."""
    encoded: list[tuple[EncodedResponse, EncodedResponse]] = []
    problems: list[str] = []
    for pair in pairs:
        try:
            sides = [
                encode_response(tokenizer, pair.prompt, side, chat_template, max_length, **limits)
                for side in (pair.chosen, pair.rejected)
            ]
        except RowProblem as problem:
            problems.append(f"row {pair.row}: {problem}")
            continue
        encoded.append((sides[0], sides[1]))
    if problems:
        raise bad_rows_error(
            source,
            problems,
            len(problems),
            hint="Shorten or remove these rows, or raise model.max_seq_length "
            "(or preference.max_prompt_length).",
        )
    return encoded


def _collect(
    records: list[dict[str, Any]], source: str, parse: Callable[[dict[str, Any], int], Any]
) -> list[Any]:
    rows: list[Any] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        number = row_number(records, index)
        try:
            rows.append(parse(record, number))
        except RowProblem as problem:
            problems.append(f"row {number}: {problem}")
    if problems:
        raise bad_rows_error(
            source, problems, len(problems), hint=f"Fix or remove these rows. {_HINT}"
        )
    return rows


def _pair(record: dict[str, Any], fmt: str, row: int) -> PreferencePair:
    if fmt == "shared_prefix":
        chosen_all = _conversation(record, "chosen")
        rejected_all = _conversation(record, "rejected")
        prompt, chosen, rejected = _split_shared(chosen_all, rejected_all)
    else:
        prompt = _prompt(record)
        chosen, rejected = _response(record, "chosen"), _response(record, "rejected")
    if chosen == rejected:
        raise RowProblem("chosen and rejected are the same; a pair needs two different responses")
    return PreferencePair(prompt, chosen, rejected, row)


def _unpaired(record: dict[str, Any], row: int) -> UnpairedExample:
    prompt, completion = _prompt(record), _response(record, "completion")
    if "label" not in record or record["label"] is None:
        raise RowProblem("missing field 'label' (true for a desirable completion, else false)")
    label = record["label"]
    key = label.strip().lower() if isinstance(label, str) else label
    if key not in _LABELS:
        raise RowProblem(f"field 'label' must be true or false, got {str(label)[:40]!r}")
    return UnpairedExample(prompt, completion, _LABELS[key], row)


def _prompt(record: dict[str, Any]) -> list[Message]:
    if "prompt" not in record or record["prompt"] is None:
        raise RowProblem("missing field 'prompt'")
    items = as_list(record["prompt"])
    if items is None:
        return [{"role": "user", "content": text_field(record, "prompt")}]
    messages = parse_messages(items, "prompt")
    if not messages:
        raise RowProblem("field 'prompt' is empty")
    if messages[-1]["role"] != "user":
        raise RowProblem(
            f"'prompt' ends on its {messages[-1]['role']} turn; a prompt must end on a user turn"
        )
    return messages


def _response(record: dict[str, Any], key: str) -> list[Message]:
    """A side's response: text (one assistant turn) or turns starting with the assistant's."""
    if key not in record or record[key] is None:
        raise RowProblem(f"missing field '{key}': each row needs both a chosen and a rejected side")
    items = as_list(record[key])
    if items is None:
        if isinstance(record[key], str) and not record[key].strip():
            raise RowProblem(f"field '{key}' is an empty response")
        return [{"role": "assistant", "content": text_field(record, key)}]
    if not items:
        raise RowProblem(f"field '{key}' is an empty response")
    messages = parse_messages(items, key)
    if messages[0]["role"] != "assistant":
        raise RowProblem(f"'{key}' must start with the assistant's turn, not {messages[0]['role']}")
    return messages


def _conversation(record: dict[str, Any], key: str) -> list[Message]:
    if key not in record or record[key] is None:
        raise RowProblem(f"missing field '{key}': each row needs both a chosen and a rejected side")
    value = record[key]
    items = as_list(value)
    if items is None and isinstance(value, str):
        items = _hh_turns(value, key)
    if items is None:
        raise RowProblem(f"field '{key}' must be a conversation, got {type(value).__name__}")
    return parse_messages(items, key)


def _hh_turns(text: str, key: str) -> list[Message]:
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RowProblem(
            f"field '{key}' is text but not a conversation of '\\n\\nHuman: ' and "
            "'\\n\\nAssistant: ' turns; give a 'prompt' column, or message lists"
        )
    return [
        {"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()}
        for i in range(1, len(parts), 2)
    ]


def _split_shared(
    chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen tail, rejected tail) at the first message where the two differ."""
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    if cut == len(chosen) == len(rejected):
        raise RowProblem("chosen and rejected are the same; a pair needs two different responses")
    if cut == 0:
        raise RowProblem("chosen and rejected differ from their first message: no shared prompt")
    for side, tail in (("chosen", chosen[cut:]), ("rejected", rejected[cut:])):
        if not tail:
            raise RowProblem(f"'{side}' ends where the two conversations part: an empty response")
        if tail[0]["role"] != "assistant":
            raise RowProblem(
                f"the conversations part at {side}[{cut + 1}], a {tail[0]['role']} turn; they "
                "must share the prompt and differ in the assistant's reply"
            )
    prompt = chosen[:cut]
    if prompt[-1]["role"] != "user":
        raise RowProblem("the shared prompt must end on a user turn")
    return prompt, chosen[cut:], rejected[cut:]

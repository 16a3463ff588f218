"""Prompt-only datasets for GRPO: what the policy is asked, plus the columns its rewards read.

Two row formats, as TRL's GRPOTrainer takes them: a ``prompt`` column (text, or a message list
in TRL's conversational form), or a ``messages`` list that ends on a user turn. Every other
column (``answer``, ``task``, ...) rides along untouched and reaches the reward functions as
TRL passes it, one list per column. Every row is checked here, before any weights load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine.config.schema import BUILTIN_DATASET
from engine.core.errors import DatasetError
from engine.data import builtin_prompts
from engine.data.sources import bad_rows_error, display_name, load_records, row_number

Message = dict[str, str]
Prompt = str | list[Message]

PROMPT_FORMATS = ("prompt", "messages")
_DESCRIPTIONS = {
    "prompt": "prompt (a prompt column: text or messages; other columns go to the rewards)",
    "messages": "messages ending on a user turn (other columns go to the rewards)",
}
_ROLES = ("system", "user", "assistant")
_HINT = (
    "GRPO rows need a 'prompt' (text, or a list of {role, content} ending on a user turn), or "
    "a 'messages' list ending on a user turn; other columns such as 'answer' are passed to "
    "the reward functions."
)


@dataclass(frozen=True)
class PromptRow:
    """One prompt, the source row it came from (1-based), and its other columns."""

    prompt: Prompt
    row: int
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptDataset:
    rows: list[PromptRow]
    format: str
    columns: tuple[str, ...]
    """The columns every row carries for the rewards (those of the first row)."""


def describe_prompt_format(fmt: str) -> str:
    """One line for the "detected format" message, as the SFT loader's describe_format."""
    return _DESCRIPTIONS.get(fmt, fmt)


def detect_prompt_format(records: list[dict[str, Any]], source: str) -> str:
    """``prompt`` when the first row has that column, else ``messages``; refuses other rows."""
    if not records:
        raise DatasetError(
            f"{display_name(source)}: the dataset has no rows.", hint="Add rows to the file."
        )
    row = records[0]
    if "prompt" in row:
        return "prompt"
    if "messages" in row:
        return "messages"
    keys = ", ".join(sorted(str(key) for key in row)[:12]) or "(none)"
    raise DatasetError(
        f"{display_name(source)}, row {row_number(records, 0)}: cannot find a prompt in its "
        f"keys ({keys}).",
        hint=_HINT,
    )


def to_prompt_rows(records: list[dict[str, Any]], fmt: str, source: str) -> list[PromptRow]:
    """Validate every row of ``fmt``; a DatasetError lists the first bad rows by number."""
    if fmt not in PROMPT_FORMATS:
        raise DatasetError(
            f"Unknown prompt format '{fmt}'.", hint=f"Use one of {', '.join(PROMPT_FORMATS)}."
        )
    key = fmt
    rows: list[PromptRow] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        number = row_number(records, index)
        try:
            prompt = _prompt(record, key)
        except _RowProblem as problem:
            problems.append(f"row {number}: {problem}")
            continue
        columns = {name: value for name, value in record.items() if name != key}
        rows.append(PromptRow(prompt=prompt, row=number, columns=columns))
    if problems:
        raise bad_rows_error(
            source, problems, len(problems), hint=f"Fix or remove these rows. {_HINT}"
        )
    _check_same_columns(rows, source)
    return rows


def load_prompts(
    path: str, split: str | None = "train", *, fmt: str = "auto", max_rows: int | None = None
) -> PromptDataset:
    """Rows of a prompt dataset (a file, a hub dataset, or the built-in skills as prompts)."""
    if path == BUILTIN_DATASET:
        records = builtin_prompts.records(split or "train")
    else:
        records = load_records(path, split)
    if max_rows is not None:
        records = records[:max_rows]
    if fmt == "auto":
        fmt = detect_prompt_format(records, path)
    rows = to_prompt_rows(records, fmt, path)
    return PromptDataset(rows=rows, format=fmt, columns=tuple(rows[0].columns) if rows else ())


class _RowProblem(Exception):
    """What is wrong with one row; collected by to_prompt_rows into one DatasetError."""


def _prompt(record: dict[str, Any], key: str) -> Prompt:
    if key not in record or record[key] is None:
        raise _RowProblem(f"missing field '{key}'")
    value = record[key]
    if key == "prompt" and isinstance(value, str) and not value.lstrip().startswith("["):
        if not value.strip():
            raise _RowProblem("field 'prompt' is empty")
        _check_unicode(value, "field 'prompt'")
        return value
    return _messages(value, key)


def _messages(value: Any, key: str) -> list[Message]:
    # CSV and some exports store the message list as a JSON string; accept that too.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _RowProblem(f"field '{key}' is not a valid JSON list of messages") from None
    if not isinstance(value, list | tuple):
        raise _RowProblem(
            f"field '{key}' must be text or a list of messages, got {type(value).__name__}"
        )
    if not value:
        raise _RowProblem(f"field '{key}' is empty")
    messages: list[Message] = []
    for turn, item in enumerate(value, start=1):
        where = f"{key}[{turn}]"
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise _RowProblem(f"{where} must be an object with 'role' and 'content'")
        role = str(item["role"]).lower()
        if role not in _ROLES:
            raise _RowProblem(
                f"{where} has unknown role '{str(item['role'])[:40]}' (known: {', '.join(_ROLES)})"
            )
        content = item["content"]
        if not isinstance(content, str) or not content.strip():
            raise _RowProblem(f"{where} content must be non-empty text")
        _check_unicode(content, f"{where} content")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise _RowProblem(
            f"'{key}' ends on its {messages[-1]['role']} turn; a prompt must end on a user turn "
            "(the completion is what the model writes next)"
        )
    return messages


def _check_unicode(value: str, where: str) -> None:
    # JSON can carry lone surrogates (\ud800); tokenizers reject them with a TypeError.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _RowProblem(f"{where} holds an unpaired surrogate at character {exc.start}") from None


def _check_same_columns(rows: list[PromptRow], source: str) -> None:
    """Rewards get one list per column, so a column missing from some rows is refused."""
    if not rows:
        return
    expected = set(rows[0].columns)
    odd = [row for row in rows if set(row.columns) != expected]
    if odd:
        problems = [
            f"row {row.row}: has columns {', '.join(sorted(row.columns)) or '(none)'}, "
            f"row {rows[0].row} has {', '.join(sorted(expected)) or '(none)'}"
            for row in odd
        ]
        raise bad_rows_error(
            source,
            problems,
            len(problems),
            hint="Give every row the same columns; the reward functions get one list per column.",
        )

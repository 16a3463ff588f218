"""Recognise a dataset's row format and turn every row into one normalised conversation.

A chat conversation is a list of ``{"role": system|user|assistant, "content": str}``; a ``text``
row (continued pre-training) becomes a plain string. Every row is validated here, so encoding and
training never meet a malformed row.
"""

from __future__ import annotations

import json
from typing import Any

from engine.core.errors import DatasetError
from engine.data.sources import bad_rows_error, display_name, row_number

Message = dict[str, str]
Conversation = list[Message] | str

FORMATS = ("alpaca", "sharegpt", "messages", "text")
_DESCRIPTIONS = {
    "alpaca": "alpaca (instruction/input/output)",
    "sharegpt": "sharegpt (conversations of from/value)",
    "messages": "messages (OpenAI-style role/content)",
    "text": "text (plain text, continued pre-training)",
}
# ShareGPT speakers and OpenAI roles, mapped onto the three roles chat templates know.
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_LIST_KEYS = ("messages", "conversations")
_NEEDS = {
    "alpaca": "'instruction' and 'output' text (optional 'input', 'system')",
    "sharegpt": "a 'conversations' list of {from, value}",
    "messages": "a 'messages' list of {role, content}",
    "text": "a 'text' field",
}
_FORMAT_HINT = (
    "Set dataset.format to one of alpaca, sharegpt, messages, text, or rename the columns: "
    + "; ".join(f"{fmt} needs {needs}" for fmt, needs in _NEEDS.items())
    + "."
)


def describe_format(fmt: str) -> str:
    """One line for the "detected format" message, e.g. "alpaca (instruction/input/output)"."""
    return _DESCRIPTIONS.get(fmt, fmt)


def first_row(records: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """The row a format is detected from; a dataset without rows is refused here."""
    if not records:
        raise DatasetError(
            f"{display_name(source)}: the dataset has no rows.", hint="Add rows to the file."
        )
    return records[0]


def detect_format(records: list[dict[str, Any]], source: str) -> str:
    """Guess the format from the keys of the first row; chat lists win over alpaca over text."""
    row = first_row(records, source)
    keys = set(row)
    for key in _LIST_KEYS:
        if key in keys:
            items = as_list(row[key])
            first = items[0] if items and isinstance(items[0], dict) else {}
            if "from" in first or "value" in first:
                return "sharegpt"
            if "role" in first or "content" in first:
                return "messages"
            return "sharegpt" if key == "conversations" else "messages"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "text" in keys:
        return "text"
    seen = keys_of(row)
    raise DatasetError(
        f"{display_name(source)}, row {row_number(records, 0)}: cannot tell the dataset format "
        f"from its keys ({seen}).",
        hint=_FORMAT_HINT,
    )


def to_conversations(records: list[dict[str, Any]], fmt: str, source: str) -> list[Conversation]:
    """Validate every row of ``fmt`` and normalise it; errors list the first bad rows."""
    if fmt not in FORMATS:
        raise DatasetError(f"Unknown dataset format '{fmt}'.", hint=_FORMAT_HINT)
    convert = {"alpaca": _alpaca, "sharegpt": _chat, "messages": _chat, "text": _text}[fmt]
    out: list[Conversation] = []
    problems: list[str] = []
    for index, row in enumerate(records):
        try:
            out.append(convert(row, fmt))
        except RowProblem as problem:
            problems.append(f"row {row_number(records, index)}: {problem}")
    if problems:
        raise bad_rows_error(
            source,
            problems,
            len(problems),
            hint=f"Fix or remove these rows. {fmt} rows need {_NEEDS[fmt]}; chat turns are: "
            "optional system, then user and assistant alternating, with non-empty content.",
        )
    return out


class RowProblem(Exception):
    """What is wrong with one row; collected by to_conversations (and the preference loader)
    into one DatasetError."""


def as_list(value: Any) -> list[Any] | None:
    # CSV and some exports store the message list as a JSON string; accept that too.
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, tuple):
        value = list(value)
    return value if isinstance(value, list) else None


def text_field(row: dict[str, Any], key: str, *, optional: bool = False) -> str:
    """``row[key]`` as checked text: present and non-empty unless ``optional`` (then "")."""
    if key not in row or row[key] is None:
        if optional:
            return ""
        raise RowProblem(f"missing field '{key}' (keys: {keys_of(row)})")
    value = row[key]
    if not isinstance(value, str):
        raise RowProblem(f"field '{key}' must be text, got {type(value).__name__}")
    _check_unicode(value, f"field '{key}'")
    if not optional and not value.strip():
        raise RowProblem(f"field '{key}' is empty")
    return value


def _alpaca(row: dict[str, Any], fmt: str) -> Conversation:
    instruction = text_field(row, "instruction")
    extra = text_field(row, "input", optional=True)
    system = text_field(row, "system", optional=True)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": text_field(row, "output")},
    ]
    return messages


def _text(row: dict[str, Any], fmt: str) -> Conversation:
    return text_field(row, "text")


def _chat(row: dict[str, Any], fmt: str) -> Conversation:
    role_key, content_key = ("from", "value") if fmt == "sharegpt" else ("role", "content")
    list_key = next((key for key in _LIST_KEYS if key in row), None)
    if list_key is None:
        wanted = "conversations" if fmt == "sharegpt" else "messages"
        raise RowProblem(f"missing field '{wanted}' (keys: {keys_of(row)})")
    items = as_list(row[list_key])
    if items is None:
        raise RowProblem(f"field '{list_key}' must be a list, got {type(row[list_key]).__name__}")
    messages = parse_messages(items, list_key, role_key, content_key)
    _check_order(messages, list_key)
    return messages


def parse_messages(
    items: list[Any], list_key: str, role_key: str = "role", content_key: str = "content"
) -> list[Message]:
    """``items`` as normalised messages (roles mapped, text content checked), in any order;
    a RowProblem names the first bad item as ``list_key[N]``."""
    messages: list[Message] = []
    for turn, item in enumerate(items, start=1):
        where = f"{list_key}[{turn}]"
        if not isinstance(item, dict):
            raise RowProblem(f"{where} must be an object, got {type(item).__name__}")
        if role_key not in item or content_key not in item:
            raise RowProblem(
                f"{where} needs '{role_key}' and '{content_key}' (has {keys_of(item)})"
            )
        role = _ROLES.get(str(item[role_key]).lower())
        if role is None:
            known = ", ".join(sorted(_ROLES))
            raise RowProblem(
                f"{where} has unknown {role_key} '{_short(item[role_key])}' (known: {known})"
            )
        content = _content_text(item[content_key], where)
        messages.append({"role": role, "content": content})
    return messages


def _content_text(value: Any, where: str) -> str:
    # OpenAI-style content may be a list of parts; only text parts can be trained on here.
    if isinstance(value, list):
        parts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(value) or not all(isinstance(p, str) for p in parts):
            raise RowProblem(f"{where} content has non-text parts; only text is supported")
        value = "".join(parts)  # type: ignore[arg-type]
    if not isinstance(value, str):
        raise RowProblem(f"{where} content must be text, got {type(value).__name__}")
    if not value.strip():
        raise RowProblem(f"{where} has empty content")
    _check_unicode(value, f"{where} content")
    return value


def _short(value: Any, limit: int = 40) -> str:
    """A value as shown in a message: one paragraph, however huge the row."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def keys_of(row: dict[str, Any], limit: int = 12) -> str:
    """A row's keys for a message: sorted, each shortened, at most ``limit`` of them."""
    keys = sorted(_short(key) for key in row)
    more = f", ... ({len(keys)} keys)" if len(keys) > limit else ""
    return (", ".join(keys[:limit]) or "(none)") + more


def _check_unicode(value: str, where: str) -> None:
    # JSON can carry lone surrogates (\ud800); tokenizers reject them with a TypeError.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RowProblem(
            f"{where} holds an unpaired surrogate ({value[exc.start]!a}) at character {exc.start}"
        ) from None


def _check_order(messages: list[Message], list_key: str) -> None:
    """Optional leading system, then user/assistant alternating from user, >= 1 assistant."""
    if not messages:
        raise RowProblem(f"'{list_key}' is empty")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for turn, message in enumerate(body):
        expected = "user" if turn % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = turn + 1 + (len(messages) - len(body))
            raise RowProblem(
                f"{list_key}[{position}] is '{message['role']}' but '{expected}' was expected "
                "(turns must be: optional system, then user and assistant alternating)"
            )
    if not any(message["role"] == "assistant" for message in body):
        raise RowProblem("has no assistant turn, so there is nothing to learn from it")

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import DatasetError
from engine.data.formats import describe_format, detect_format, to_conversations
from engine.data.sources import load_records

DATA = Path(__file__).parents[2] / "data"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def bad(records: list[dict[str, Any]], fmt: str, source: str = "d.jsonl") -> DatasetError:
    with pytest.raises(DatasetError) as info:
        to_conversations(records, fmt, source)
    return info.value


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"instruction": "a", "input": "", "output": "b"}, "alpaca"),
        ({"instruction": "a", "output": "b", "text": "ignored"}, "alpaca"),
        ({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt"),
        ({"conversations": [{"role": "user", "content": "a"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "a"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "a"}], "text": "x"}, "messages"),
        ({"text": "hello"}, "text"),
    ],
)
def test_detect_format(row: dict[str, Any], fmt: str) -> None:
    assert detect_format([row], "d.jsonl") == fmt


def test_detect_format_unknown_lists_keys() -> None:
    with pytest.raises(DatasetError) as info:
        detect_format([{"prompt": "a", "completion": "b"}], "d.jsonl")
    assert "d.jsonl, row 1" in info.value.message
    assert "completion, prompt" in info.value.message
    assert "dataset.format" in (info.value.hint or "")


def test_describe_format() -> None:
    assert describe_format("alpaca") == "alpaca (instruction/input/output)"
    assert describe_format("text").startswith("text")


def test_alpaca_conversion() -> None:
    records = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Hi", "input": "", "output": "Hello", "system": "Be nice."},
        {"instruction": "Hi", "input": None, "output": "Hello"},
    ]
    assert to_conversations(records, "alpaca", "d.jsonl") == [
        [user("Add.\n\n2 and 3"), assistant("5")],
        [{"role": "system", "content": "Be nice."}, user("Hi"), assistant("Hello")],
        [user("Hi"), assistant("Hello")],
    ]


def test_sharegpt_from_file_normalises_roles() -> None:
    records = load_records(str(DATA / "sharegpt_small.jsonl"))
    conversations = to_conversations(records, "sharegpt", "sharegpt_small.jsonl")
    assert conversations[1] == [
        {"role": "system", "content": "Be brief."},
        user("2+2?"),
        assistant("4"),
        user("And 3+3?"),
        assistant("6"),
    ]


def test_messages_content_parts_and_json_string_list() -> None:
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    records = [
        {"messages": [user("Hi"), {"role": "assistant", "content": parts}]},
        {"messages": json.dumps([user("Hi"), assistant("Yo")])},  # as a CSV cell holds it
    ]
    assert to_conversations(records, "messages", "d.csv") == [
        [user("Hi"), assistant("Hello")],
        [user("Hi"), assistant("Yo")],
    ]


def test_text_conversion() -> None:
    assert to_conversations([{"text": "Once upon"}], "text", "d.jsonl") == ["Once upon"]


@pytest.mark.parametrize(
    ("fmt", "row", "problem"),
    [
        ("alpaca", {"instruction": "a"}, "missing field 'output' (keys: instruction)"),
        ("alpaca", {"instruction": "a", "output": 3}, "field 'output' must be text, got int"),
        ("alpaca", {"instruction": " ", "output": "b"}, "field 'instruction' is empty"),
        ("text", {"text": ""}, "field 'text' is empty"),
        ("messages", {"msgs": []}, "missing field 'messages' (keys: msgs)"),
        ("messages", {"messages": "hi"}, "field 'messages' must be a list, got str"),
        ("messages", {"messages": []}, "'messages' is empty"),
        ("messages", {"messages": ["hi"]}, "messages[1] must be an object, got str"),
        ("messages", {"messages": [{"role": "user"}]}, "messages[1] needs 'role' and 'content'"),
        ("messages", {"messages": [user("a"), assistant("")]}, "messages[2] has empty content"),
        (
            "messages",
            {"messages": [user("a"), assistant(None)]},
            "messages[2] content must be text, got NoneType",
        ),
        ("messages", {"messages": [assistant("a")]}, "messages[1] is 'assistant' but 'user'"),
        ("messages", {"messages": [user("a"), user("b")]}, "messages[2] is 'user' but 'assistant'"),
        ("messages", {"messages": [user("a")]}, "has no assistant turn"),
        (
            "messages",
            {"messages": [user("a"), assistant("b"), {"role": "system", "content": "c"}]},
            "messages[3] is 'system' but 'user' was expected",
        ),
        (
            "sharegpt",
            {"conversations": [{"from": "bot", "value": "a"}]},
            "conversations[1] has unknown from 'bot'",
        ),
    ],
)
def test_bad_rows_name_file_row_and_problem(fmt: str, row: dict[str, Any], problem: str) -> None:
    good = {
        "alpaca": {"instruction": "a", "output": "b"},
        "text": {"text": "t"},
        "messages": {"messages": [user("a"), assistant("b")]},
        "sharegpt": {
            "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]
        },
    }[fmt]
    error = bad([good, good, row], fmt)
    assert error.message.startswith(f"d.jsonl, row 3: {problem}")
    assert error.hint


def test_row_numbers_follow_the_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    lines = [{"messages": [user("a"), assistant("b")]}] * 5 + [{"messages": [user("a")]}]
    path.write_text("\n\n".join(json.dumps(line) for line in lines))  # blank line between rows
    records = load_records(str(path), "train[2:]")
    error = bad(records, "messages", str(path))
    assert error.message.startswith("chat.jsonl, row 11: has no assistant turn")


def test_many_bad_rows_are_reported_together() -> None:
    records = [{"instruction": "a", "output": ""} for _ in range(8)]
    message = bad(records, "alpaca").message
    assert message.startswith("d.jsonl: 8 bad rows:")
    assert "row 5: field 'output' is empty" in message and "row 6:" not in message
    assert "and 3 more" in message


def test_unknown_format_name() -> None:
    assert "Unknown dataset format 'chat'" in bad([{"text": "a"}], "chat").message

"""Prompt-only datasets for GRPO: both formats, the columns carried to the rewards, bad rows
named by number, and the built-in skills as prompts with their held-out split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.config.schema import BUILTIN_DATASET
from engine.core.errors import EXIT_BAD_INPUT, DatasetError
from engine.data import builtin_data
from engine.data.prompts import describe_prompt_format, load_prompts


def jsonl(tmp_path: Path, rows: list[dict[str, Any]], name: str = "prompts.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def load_error(path: str, **kwargs: Any) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_prompts(path, **kwargs)
    assert info.value.exit_code == EXIT_BAD_INPUT
    return info.value


def test_a_text_prompt_column_keeps_the_other_columns(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        [
            {"prompt": "2+2?", "answer": "4", "level": 1},
            {"prompt": "3+3?", "answer": "6", "level": 2},
        ],
    )
    data = load_prompts(path)
    assert data.format == "prompt" and data.columns == ("answer", "level")
    assert [(row.prompt, row.row, row.columns) for row in data.rows] == [
        ("2+2?", 1, {"answer": "4", "level": 1}),
        ("3+3?", 2, {"answer": "6", "level": 2}),
    ]
    assert "prompt column" in describe_prompt_format(data.format)


def test_a_conversational_prompt_column_is_kept_as_messages(tmp_path: Path) -> None:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    (row,) = load_prompts(jsonl(tmp_path, [{"prompt": prompt, "answer": "Hello"}])).rows
    assert row.prompt == prompt and row.columns == {"answer": "Hello"}


def test_messages_ending_on_a_user_turn_are_prompts(tmp_path: Path) -> None:
    messages = [
        {"role": "user", "content": "Name?"},
        {"role": "assistant", "content": "Tilly."},
        {"role": "user", "content": "Again?"},
    ]
    data = load_prompts(jsonl(tmp_path, [{"messages": messages, "answer": "Tilly."}]))
    assert data.format == "messages" and data.rows[0].prompt == messages
    assert "ending on a user turn" in describe_prompt_format("messages")


def test_a_csv_prompt_list_written_as_json_is_read(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('prompt,answer\n"[{""role"": ""user"", ""content"": ""Hi""}]",x\n')
    (row,) = load_prompts(str(path)).rows
    assert row.prompt == [{"role": "user", "content": "Hi"}]


def test_bad_rows_are_all_named_by_row_number(tmp_path: Path) -> None:
    rows = [
        {"prompt": "fine", "answer": "a"},
        {"prompt": "", "answer": "a"},
        {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "answer": "a",
        },
        {"prompt": 7, "answer": "a"},
        {"prompt": [{"role": "robot", "content": "q"}], "answer": "a"},
        {"answer": "a"},
    ]
    message = str(load_error(jsonl(tmp_path, rows)))
    assert "prompts.jsonl: 5 bad rows:" in message
    for fragment in (
        "row 2: field 'prompt' is empty",
        "row 3: 'prompt' ends on its assistant turn; a prompt must end on a user turn",
        "row 4: field 'prompt' must be text or a list of messages, got int",
        "row 5: prompt[1] has unknown role 'robot'",
        "row 6: missing field 'prompt'",
    ):
        assert fragment in message


def test_rows_with_different_columns_are_refused(tmp_path: Path) -> None:
    message = str(load_error(jsonl(tmp_path, [{"prompt": "a", "answer": "1"}, {"prompt": "b"}])))
    assert "row 2: has columns (none), row 1 has answer" in message


def test_rows_without_a_prompt_say_what_grpo_needs(tmp_path: Path) -> None:
    error = load_error(jsonl(tmp_path, [{"instruction": "a", "output": "b"}]))
    assert "row 1: cannot find a prompt in its keys (instruction, output)" in error.message
    assert error.hint and "'prompt'" in error.hint and "'messages'" in error.hint


def test_the_builtin_skills_as_prompts_carry_their_answers() -> None:
    data = load_prompts(BUILTIN_DATASET)
    expected = builtin_data.generate("train")
    assert data.format == "prompt" and data.columns == ("answer", "task")
    assert len(data.rows) == len(expected)
    assert [(row.prompt[0]["content"], row.columns["answer"]) for row in data.rows] == [  # type: ignore[index]
        (example.prompt, example.answer) for example in expected
    ]


def test_the_builtin_held_out_prompts_are_never_training_prompts() -> None:
    train = {row.prompt[0]["content"] for row in load_prompts(BUILTIN_DATASET).rows}  # type: ignore[index]
    heldout = load_prompts(BUILTIN_DATASET, "heldout")
    assert heldout.rows and not train & {row.prompt[0]["content"] for row in heldout.rows}  # type: ignore[index]
    assert {row.columns["task"] for row in heldout.rows} == set(builtin_data.TASKS)


def test_builtin_slices_and_unknown_splits() -> None:
    assert [row.row for row in load_prompts(BUILTIN_DATASET, "train[:3]").rows] == [1, 2, 3]
    assert len(load_prompts(BUILTIN_DATASET, max_rows=5).rows) == 5
    assert "splits train, heldout" in load_error(BUILTIN_DATASET, split="test").message

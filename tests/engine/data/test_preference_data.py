"""Preference datasets: the four layouts detected and split, every bad row named, and the loss
mask on the response tokens only, token by token, for every chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import EXIT_BAD_INPUT, DatasetError
from engine.data.builtin_preference import WRONG_IDENTITY, records, wrong_answer
from engine.data.encode import IGNORE_INDEX, encode_conversation
from engine.data.formats import RowProblem
from engine.data.preference import (
    PreferencePair,
    describe_preference_format,
    detect_preference_format,
    encode_pairs,
    encode_response,
    load_preference,
    to_pairs,
    to_unpaired,
    unpair,
)
from engine.data.templates import CHAT_TEMPLATES, resolve_chat_template

USER = {"role": "user", "content": "What is 2+2?"}
GOOD = {"role": "assistant", "content": "It is 4."}
BAD = {"role": "assistant", "content": "It is 5."}


def write_jsonl(folder: Path, rows: list[dict[str, Any]]) -> str:
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


LAYOUTS = {
    "text": {"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "It is 5."},
    "conversational": {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]},
    # orpo-dpo-mix-40k: whole conversations, and a prompt column that is ignored.
    "shared_prefix": {"prompt": "What is 2+2?", "chosen": [USER, GOOD], "rejected": [USER, BAD]},
}


@pytest.mark.parametrize("fmt", sorted(LAYOUTS))
def test_the_paired_layouts_give_the_same_pair(fmt: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [LAYOUTS[fmt]])
    dataset = load_preference(path)
    assert dataset.format == fmt and describe_preference_format(fmt) != fmt
    assert dataset.pairs == [PreferencePair([USER], [GOOD], [BAD], 1)]


def test_hh_strings_split_at_the_first_differing_turn(tmp_path: Path) -> None:
    shared = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?"
    row = {"chosen": shared + "\n\nAssistant: It is 4.", "rejected": shared + "\n\nAssistant: 5"}
    dataset = load_preference(write_jsonl(tmp_path, [row]))
    assert dataset.format == "shared_prefix"
    (pair,) = dataset.pairs
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    assert pair.prompt[-1]["content"] == "What is 2+2?"
    assert pair.chosen == [GOOD] and pair.rejected == [{"role": "assistant", "content": "5"}]


def test_kto_rows_and_paired_rows_for_kto(tmp_path: Path) -> None:
    rows = [
        {"prompt": "What is 2+2?", "completion": "It is 4.", "label": True},
        {"prompt": [USER], "completion": [BAD], "label": "false"},
    ]
    dataset = load_preference(write_jsonl(tmp_path, rows), task="kto")
    assert dataset.format == "unpaired"
    assert [(e.prompt, e.completion, e.desirable) for e in dataset.unpaired] == [
        ([USER], [GOOD], True),
        ([USER], [BAD], False),
    ]
    paired = load_preference(write_jsonl(tmp_path, [LAYOUTS["conversational"]]), task="kto")
    assert [(e.completion, e.desirable) for e in paired.unpaired] == [
        ([GOOD], True),
        ([BAD], False),
    ]
    assert unpair(paired.pairs) == paired.unpaired


def test_unpaired_rows_are_refused_for_a_paired_task(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"prompt": "p", "completion": "c", "label": True}])
    with pytest.raises(DatasetError) as info:
        load_preference(path, task="dpo")
    assert info.value.exit_code == EXIT_BAD_INPUT and "set task: kto" in info.value.hint.lower()


BAD_ROWS = [
    ({"prompt": [USER], "chosen": [GOOD], "rejected": [GOOD]}, "chosen and rejected are the same"),
    ({"prompt": [USER], "chosen": [GOOD]}, "missing field 'rejected'"),
    ({"prompt": [USER], "chosen": [], "rejected": [BAD]}, "field 'chosen' is an empty response"),
    (
        {"prompt": [USER], "chosen": [GOOD], "rejected": [{"role": "assistant", "content": " "}]},
        "rejected[1] has empty content",
    ),
    (
        {"prompt": [GOOD], "chosen": [GOOD], "rejected": [BAD]},
        "'prompt' ends on its assistant turn",
    ),
    (
        {"prompt": [USER], "chosen": [USER], "rejected": [BAD]},
        "'chosen' must start with the assistant's turn",
    ),
    ({"chosen": [GOOD], "rejected": [BAD]}, "missing field 'prompt'"),
]


@pytest.mark.parametrize(("row", "fragment"), BAD_ROWS)
def test_a_bad_row_is_named_with_its_file_and_number(
    tmp_path: Path, row: dict, fragment: str
) -> None:
    with pytest.raises(DatasetError) as info:
        load_preference(write_jsonl(tmp_path, [LAYOUTS["conversational"], row]))
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert f"pairs.jsonl, row 2: {fragment}" in str(info.value)


def test_all_bad_rows_are_counted_in_one_error(tmp_path: Path) -> None:
    rows = [LAYOUTS["conversational"], *(row for row, _ in BAD_ROWS)]
    with pytest.raises(DatasetError) as info:
        load_preference(write_jsonl(tmp_path, rows))
    message = str(info.value)
    assert "7 bad rows" in message and "... and 2 more" in message
    for number, (_, fragment) in enumerate(BAD_ROWS[:5], start=2):
        assert f"row {number}: {fragment}" in message


@pytest.mark.parametrize(
    ("chosen", "rejected", "fragment"),
    [
        ([USER, GOOD], [USER, GOOD], "chosen and rejected are the same"),
        ([GOOD], [BAD], "chosen and rejected differ from their first message"),
        ([USER, GOOD], [USER], "'rejected' ends where the two conversations part"),
        (
            [USER, GOOD, USER],
            [USER, GOOD, {"role": "user", "content": "other"}],
            "the conversations part at chosen[3], a user turn",
        ),
    ],
)
def test_shared_prefix_rows_that_cannot_be_split(chosen, rejected, fragment: str) -> None:
    with pytest.raises(DatasetError) as info:
        to_pairs([{"chosen": chosen, "rejected": rejected}], "shared_prefix", "hh.jsonl")
    assert f"hh.jsonl, row 1: {fragment}" in str(info.value)


def test_hh_text_that_is_not_a_conversation() -> None:
    with pytest.raises(DatasetError, match="not a conversation of"):
        to_pairs([{"chosen": "just text", "rejected": "other"}], "shared_prefix", "x.jsonl")


@pytest.mark.parametrize("label", [None, "maybe", 2, 0.5])
def test_kto_labels_must_be_true_or_false(label: object) -> None:
    with pytest.raises(DatasetError, match=r"row 1: (missing field 'label'|field 'label' must be)"):
        to_unpaired([{"prompt": "p", "completion": "c", "label": label}], "kto.jsonl")


def test_unrecognised_columns_say_what_is_needed() -> None:
    with pytest.raises(DatasetError) as info:
        detect_preference_format([{"question": "q", "answer": "a"}], "x.jsonl")
    assert (
        "row 1: no preference columns among its keys (answer, question)" in str(info.value)
        and "chosen" in info.value.hint
    )


# -- encoding: the mask covers the response and nothing else ----------------------------------
def labelled_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode(
        [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    )


@pytest.mark.parametrize("name", sorted([*CHAT_TEMPLATES, "model"]))
@pytest.mark.parametrize("multi_turn", [False, True])
def test_only_the_response_is_labelled_token_by_token(
    smol_tokenizer: Any, name: str, multi_turn: bool
) -> None:
    template = resolve_chat_template(smol_tokenizer, name)
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    prompt = (earlier if multi_turn else []) + [USER]
    encoded = {
        side: encode_response(smol_tokenizer, prompt, [reply], template, 4096)
        for side, reply in (("chosen", GOOD), ("rejected", BAD))
    }
    for side, reply in (("chosen", GOOD), ("rejected", BAD)):
        example, prompt_tokens = encoded[side].example, encoded[side].prompt_tokens
        full = smol_tokenizer.apply_chat_template(
            [*prompt, reply], chat_template=template, tokenize=False
        )
        assert smol_tokenizer.decode(example.input_ids) == full
        # Token by token: nothing before the response is trained (the earlier reply included),
        # every trained token is the response's, and the first trained token starts it.
        assert all(label == IGNORE_INDEX for label in example.labels[:prompt_tokens])
        trained = labelled_text(smol_tokenizer, example.input_ids, example.labels)
        assert trained.startswith(reply["content"]) and "Hello!" not in trained
        # The same tokens SFT's assistant-only encoding trains for this reply, exactly.
        sft = encode_conversation(smol_tokenizer, [*prompt, reply], template, "responses", 4096)
        assert sft.input_ids == example.input_ids
        assert example.labels == [IGNORE_INDEX] * prompt_tokens + sft.labels[prompt_tokens:]
        assert example.labels[prompt_tokens] == example.input_ids[prompt_tokens]
    # Both sides share the prompt's tokens.
    chosen, rejected = encoded["chosen"], encoded["rejected"]
    assert chosen.prompt_tokens == rejected.prompt_tokens
    shared = chosen.prompt_tokens
    assert chosen.example.input_ids[:shared] == rejected.example.input_ids[:shared]


def test_a_prompt_that_fills_the_limit_is_a_bad_row_naming_every_row(smol_tokenizer: Any) -> None:
    template = resolve_chat_template(smol_tokenizer, "chatml")
    long_user = {"role": "user", "content": "word " * 200}
    pairs = [
        PreferencePair([USER], [GOOD], [BAD], 1),
        PreferencePair([long_user], [GOOD], [BAD], 2),
        PreferencePair([long_user], [GOOD], [BAD], 5),
    ]
    with pytest.raises(DatasetError) as info:
        encode_pairs(pairs, smol_tokenizer, template, 64, "p.jsonl")
    message = str(info.value)
    assert "2 bad rows" in message and "row 2: the prompt alone is" in message
    assert "row 5:" in message and "model.max_seq_length (64)" in message
    with pytest.raises(DatasetError, match="past max_prompt_length \\(8\\)"):
        encode_pairs(pairs[:1], smol_tokenizer, template, 64, "p.jsonl", max_prompt_length=8)


def test_long_responses_are_cut_to_max_completion_length(smol_tokenizer: Any) -> None:
    template = resolve_chat_template(smol_tokenizer, "chatml")
    long_reply = {"role": "assistant", "content": "four " * 100}
    encoded = encode_response(
        smol_tokenizer, [USER], [long_reply], template, 4096, max_completion_length=10
    )
    assert encoded.example.truncated
    assert len(encoded.example.input_ids) == encoded.prompt_tokens + 10
    assert encoded.example.num_trained == 10
    whole = encode_response(smol_tokenizer, [USER], [long_reply], template, 40)
    assert len(whole.example.input_ids) == 40 and whole.example.truncated


def test_encode_response_raises_a_row_problem_for_the_caller_to_collect(smol_tokenizer) -> None:
    template = resolve_chat_template(smol_tokenizer, "chatml")
    with pytest.raises(RowProblem, match="leaving no room for the response"):
        encode_response(
            smol_tokenizer, [{"role": "user", "content": "x " * 50}], [GOOD], template, 16
        )


# -- the built-in pairs ----------------------------------------------------------------------
def test_builtin_pairs_are_right_against_wrong_and_deterministic() -> None:
    train = records("train")
    assert train == records("train") and len(train) == 384
    for row in train:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert chosen != rejected and rejected.strip()
    by_task = {row["task"]: row for row in train}
    assert by_task["identity"]["rejected"][0]["content"] == WRONG_IDENTITY
    upper = by_task["uppercase"]
    assert upper["rejected"][0]["content"].upper() == upper["chosen"][0]["content"]
    heldout_prompts = {row["prompt"][0]["content"] for row in records("heldout")}
    assert not heldout_prompts & {row["prompt"][0]["content"] for row in train}
    dataset = load_preference("builtin:finetty-skills", "train[:8]")
    assert dataset.format == "conversational" and len(dataset.pairs) == 8


@pytest.mark.parametrize(
    ("task", "prompt", "answer", "wrong"),
    [
        ("last_word", "What is the last word of: red blue blue", "blue", "red"),
        ("last_word", "What is the last word of: red red", "red", "red red"),
        ("remove_spaces", "Delete every space in: a b", "ab", "a b"),
    ],
)
def test_wrong_answers_never_equal_the_answer(task, prompt, answer, wrong) -> None:
    assert wrong_answer(task, prompt, answer) == wrong


def test_builtin_pairs_of_an_unknown_split() -> None:
    with pytest.raises(DatasetError, match="splits train, heldout"):
        records("test")


def test_max_rows_keeps_the_first_rows_and_their_numbers(tmp_path: Path) -> None:
    rows = [LAYOUTS["text"], {"prompt": "p", "chosen": "a", "rejected": "a"}]
    assert len(load_preference(write_jsonl(tmp_path, rows), max_rows=1).pairs) == 1
    pairs = load_preference("builtin:finetty-skills", "train[4:6]").pairs
    assert [pair.row for pair in pairs] == [5, 6]

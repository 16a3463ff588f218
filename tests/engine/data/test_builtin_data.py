"""The built-in dataset: deterministic, checkable, and its held-out split is really held out."""

from __future__ import annotations

from engine.data import builtin_data


def test_generation_is_deterministic_and_covers_every_task() -> None:
    first, again = builtin_data.generate("train"), builtin_data.generate("train")
    assert first == again
    assert {ex.task for ex in first} == set(builtin_data.TASKS)
    assert len(first) == 96 * len(builtin_data.TASKS)


def test_heldout_never_repeats_a_training_prompt() -> None:
    train = {ex.prompt for ex in builtin_data.generate("train")}
    heldout = builtin_data.generate("heldout")
    assert heldout and not train & {ex.prompt for ex in heldout}
    assert len({ex.prompt for ex in heldout}) == len(heldout)


def test_answers_are_exactly_what_the_task_asks() -> None:
    for example in builtin_data.generate("heldout"):
        text = example.prompt.split(": ", 1)[-1]
        expected = {
            "remove_spaces": text.replace(" ", ""),
            "uppercase": text.upper(),
            "last_word": text.split()[-1],
            "identity": builtin_data.IDENTITY_ANSWER,
        }[example.task]
        assert example.answer == expected


def test_records_are_in_messages_format() -> None:
    record = builtin_data.records("train")[0]
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]


def test_exact_match_ignores_only_whitespace_and_one_full_stop() -> None:
    assert builtin_data.is_correct("thecat", " thecat.\n")
    assert not builtin_data.is_correct("thecat", "the cat")
    assert not builtin_data.is_correct("CAT", "cat")

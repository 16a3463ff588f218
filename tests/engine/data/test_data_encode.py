from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from engine.core.errors import DatasetError
from engine.data.encode import IGNORE_INDEX, encode_conversation, encode_text
from engine.data.templates import CHAT_TEMPLATES, resolve_chat_template

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How are you?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]
# What each template must train for a reply R, decoded with the SmolLM2 tokenizer: the reply,
# its end-of-turn marker and the template's separator after it. Under SmolLM2's vocabulary the
# llama-3 markers are plain text, and the token "><" that ends "<|eot_id|>" also starts the next
# header: it starts inside the reply's span, so (by the documented rule) it is trained.
EXPECTED_AFTER_REPLY = {
    "chatml": ["<|im_end|>\n"] * 2,
    "llama-3": ["<|eot_id|><", "<|eot_id|>"],
    "mistral": ["</s>"] * 2,
    "gemma": ["<end_of_turn>\n"] * 2,
    "phi-3": ["<|end|>\n"] * 2,
    "zephyr": ["</s>\n"] * 2,
    "alpaca": ["<|im_end|>"] * 2,  # alpaca ends a reply with the tokenizer's eos
    "model": ["<|im_end|>\n"] * 2,  # SmolLM2's own ChatML template
}


def labelled_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token ids."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token  # labels are unshifted copies of the ids
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != IGNORE_INDEX
    return runs


@pytest.mark.parametrize("name", sorted(EXPECTED_AFTER_REPLY))
@pytest.mark.parametrize("with_system", [True, False])
@pytest.mark.parametrize("turns", [2, 4])
def test_exactly_the_replies_are_labelled(
    smol_tokenizer: Any, name: str, with_system: bool, turns: int
) -> None:
    template = resolve_chat_template(smol_tokenizer, name)
    messages = ([SYSTEM] if with_system else []) + TURNS[:turns]
    example = encode_conversation(smol_tokenizer, messages, template, "responses", 4096)
    full = smol_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert smol_tokenizer.decode(example.input_ids) == full
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    suffixes = EXPECTED_AFTER_REPLY[name][:]
    if len(replies) == 1:
        suffixes = suffixes[-1:]  # the single reply is also the last one
    expected = [reply + suffix for reply, suffix in zip(replies, suffixes, strict=True)]
    runs = labelled_runs(example.input_ids, example.labels)
    assert [smol_tokenizer.decode(run) for run in runs] == expected
    assert example.num_trained == sum(len(run) for run in runs)
    assert not example.truncated


@pytest.mark.parametrize("name", sorted(EXPECTED_AFTER_REPLY))
def test_no_prompt_token_is_labelled(smol_tokenizer: Any, name: str) -> None:
    """Independent oracle: labelled iff the token starts inside a located reply+marker span."""
    template = resolve_chat_template(smol_tokenizer, name)
    messages = [SYSTEM, *TURNS]
    full = smol_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    marker = EXPECTED_AFTER_REPLY[name][-1]
    spans, cursor = [], 0
    for reply in (m["content"] for m in messages if m["role"] == "assistant"):
        start = full.index(reply + marker, cursor)
        cursor = start + len(reply + marker)
        spans.append((start, cursor))
    encoded = smol_tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    oracle = [any(a <= s < b for a, b in spans) for s, _ in encoded["offset_mapping"]]
    example = encode_conversation(smol_tokenizer, messages, template, "responses", 4096)
    assert [label != IGNORE_INDEX for label in example.labels] == oracle


def test_train_on_all_labels_everything_but_the_first_token(smol_tokenizer: Any) -> None:
    example = encode_conversation(smol_tokenizer, TURNS, CHAT_TEMPLATES["chatml"], "all", 4096)
    assert example.labels[0] == IGNORE_INDEX
    assert example.labels[1:] == example.input_ids[1:]
    assert example.num_trained == len(example.input_ids) - 1


def test_straddling_token_belongs_to_the_side_it_starts_on(smol_tokenizer: Any) -> None:
    # The generation prompt ends mid-word ("...A: ans"), the reply continues it ("wer is yes"):
    # the token " answer" starts in the prompt, so it is not trained; " is" and " yes" are.
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\n' }}"
        "{% else %}{{ m['content'] + '.' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'A: ans' }}{% endif %}"
    )
    messages = [
        {"role": "user", "content": "ok?"},
        {"role": "assistant", "content": "A: answer is yes"},
    ]
    example = encode_conversation(smol_tokenizer, messages, template, "responses", 64)
    pieces = [smol_tokenizer.decode([t]) for t in example.input_ids]
    assert " answer" in pieces
    trained = [p for p, label in zip(pieces, example.labels, strict=True) if label != IGNORE_INDEX]
    assert "".join(trained) == " is yes."


def test_non_incremental_template_is_refused(smol_tokenizer: Any) -> None:
    template = (
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}<last>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}>> {% endif %}"
    )
    with pytest.raises(DatasetError) as info:
        encode_conversation(smol_tokenizer, TURNS, template, "responses", 4096)
    assert "the model's own chat template does not render conversations incrementally" in (
        info.value.message
    )
    assert "train_on: all" in (info.value.hint or "")


def test_broken_template_is_a_dataset_error(smol_tokenizer: Any) -> None:
    with pytest.raises(DatasetError) as info:
        encode_conversation(smol_tokenizer, TURNS, "{{ raise_exception('no') }}", "all", 64)
    assert "failed to render" in info.value.message


def test_truncation_keeps_the_start(smol_tokenizer: Any) -> None:
    template = CHAT_TEMPLATES["chatml"]
    whole = encode_conversation(smol_tokenizer, TURNS, template, "responses", 4096)
    cut = encode_conversation(smol_tokenizer, TURNS, template, "responses", 20)
    assert cut.truncated and len(cut.input_ids) == 20
    assert cut.input_ids == whole.input_ids[:20] and cut.labels == whole.labels[:20]
    assert cut.num_trained == sum(1 for label in cut.labels if label != IGNORE_INDEX)


def test_encode_text(smol_tokenizer: Any) -> None:
    example = encode_text(smol_tokenizer, "Once upon a time", 64)
    assert example.input_ids[-1] == smol_tokenizer.eos_token_id
    assert smol_tokenizer.decode(example.input_ids) == "Once upon a time<|im_end|>"
    assert example.labels == [IGNORE_INDEX, *example.input_ids[1:]]
    short = encode_text(smol_tokenizer, "Once upon a time there was a tokenizer", 3)
    assert short.truncated and len(short.input_ids) == 3


def test_slow_tokenizer_and_bad_arguments(smol_tokenizer: Any) -> None:
    slow = SimpleNamespace(is_fast=False, apply_chat_template=smol_tokenizer.apply_chat_template)
    with pytest.raises(DatasetError, match="not a fast tokenizer"):
        encode_conversation(slow, TURNS, CHAT_TEMPLATES["chatml"], "responses", 64)
    with pytest.raises(DatasetError, match="at least 2 tokens"):
        encode_text(smol_tokenizer, "x", 1)
    with pytest.raises(DatasetError, match="Unknown train_on"):
        encode_conversation(smol_tokenizer, TURNS, CHAT_TEMPLATES["chatml"], "prompts", 64)  # type: ignore[arg-type]

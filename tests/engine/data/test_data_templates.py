from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from engine.core.errors import DatasetError
from engine.data.templates import (
    CHAT_TEMPLATES,
    end_of_turn,
    model_template,
    resolve_chat_template,
    template_eos,
    template_names,
)

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
NO_TEMPLATE = SimpleNamespace(chat_template=None, eos_token="</s>")


def render(tokenizer: Any, messages: list[dict[str, str]], name: str, gen: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATES[name], tokenize=False, add_generation_prompt=gen
    )


def test_required_templates_exist() -> None:
    required = {"chatml", "llama-3", "mistral", "gemma", "phi-3", "alpaca", "zephyr"}
    assert required <= set(CHAT_TEMPLATES)
    assert template_names()[:2] == ["auto", "model"]


def test_resolve_auto_and_model(smol_tokenizer: Any) -> None:
    assert resolve_chat_template(smol_tokenizer, "auto") == smol_tokenizer.chat_template
    assert resolve_chat_template(smol_tokenizer, "model") == smol_tokenizer.chat_template
    assert resolve_chat_template(NO_TEMPLATE, "auto") == CHAT_TEMPLATES["chatml"]
    with pytest.raises(DatasetError) as info:
        resolve_chat_template(NO_TEMPLATE, "model")
    assert "has no chat template" in info.value.message and "chatml" in (info.value.hint or "")


def test_resolve_named_and_old_style_dict() -> None:
    assert resolve_chat_template(NO_TEMPLATE, "Llama-3") == CHAT_TEMPLATES["llama-3"]
    legacy = SimpleNamespace(chat_template={"default": "{{ x }}", "tool_use": "y"})
    assert model_template(legacy) == "{{ x }}"


@pytest.mark.parametrize(("typo", "suggestion"), [("chatm1", "chatml"), ("llama3", "llama-3")])
def test_unknown_template_suggests(typo: str, suggestion: str) -> None:
    with pytest.raises(DatasetError) as info:
        resolve_chat_template(NO_TEMPLATE, typo)
    assert f"Unknown chat template '{typo}'. Did you mean '{suggestion}'?" in info.value.message
    assert "zephyr" in (info.value.hint or "")


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_template_renders_system_turns_and_generation_prompt(
    smol_tokenizer: Any, name: str
) -> None:
    full = render(smol_tokenizer, [SYSTEM, *CONVERSATION], name)
    assert "Be brief." in full
    for message in CONVERSATION:
        assert message["content"] in full
    # The end-of-turn marker closes every reply (alpaca: the tokenizer's eos).
    marker = template_eos(name) or smol_tokenizer.eos_token
    assert full.count("Hello!" + marker) == 1 and full.count("4" + marker) == 1
    # add_generation_prompt adds the assistant header (mistral has none: generation follows [/INST])
    with_prompt = render(smol_tokenizer, [SYSTEM, *CONVERSATION[:3]], name, gen=True)
    without = render(smol_tokenizer, [SYSTEM, *CONVERSATION[:3]], name, gen=False)
    assert with_prompt.startswith(without)
    assert (with_prompt != without) == (name != "mistral")


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
@pytest.mark.parametrize("system", [True, False])
def test_templates_render_incrementally(smol_tokenizer: Any, name: str, system: bool) -> None:
    """The property encode.py needs: every prefix render is a string prefix of the full one."""
    messages = [SYSTEM, *CONVERSATION] if system else CONVERSATION
    full = render(smol_tokenizer, messages, name)
    for k in range(1, len(messages) + 1):
        assert full.startswith(render(smol_tokenizer, messages[:k], name, gen=False))
        if k < len(messages) and messages[k]["role"] == "assistant":
            assert full.startswith(render(smol_tokenizer, messages[:k], name, gen=True))


def test_folded_system_prompt(smol_tokenizer: Any) -> None:
    assert render(smol_tokenizer, [SYSTEM, *CONVERSATION[:2]], "mistral") == (
        "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>"
    )
    assert render(smol_tokenizer, [SYSTEM, *CONVERSATION[:2]], "gemma") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
    )


def test_exact_renders(smol_tokenizer: Any) -> None:
    pair = CONVERSATION[:2]
    assert render(smol_tokenizer, pair, "chatml", gen=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert render(smol_tokenizer, pair[:1], "llama-3", gen=True) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render(smol_tokenizer, pair, "alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nHi\n\n### Response:\nHello!<|im_end|>"
    )


def test_template_eos_and_end_of_turn(smol_tokenizer: Any) -> None:
    assert template_eos("chatml") == "<|im_end|>"
    assert template_eos("llama-3") == "<|eot_id|>"
    assert template_eos("gemma") == "<end_of_turn>"
    assert template_eos("alpaca") is None
    assert template_eos("nonsense") is None
    assert end_of_turn(smol_tokenizer, smol_tokenizer.chat_template) == "<|im_end|>"
    assert end_of_turn(smol_tokenizer, CHAT_TEMPLATES["phi-3"]) == "<|end|>"
    assert end_of_turn(smol_tokenizer, CHAT_TEMPLATES["alpaca"]) == "<|im_end|>"

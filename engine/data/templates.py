"""Named chat templates (Jinja, for HF ``apply_chat_template``) and how a preset picks one.

Each named template is the exact text format of its model family, special tokens written out
literally, so a template renders the same whichever tokenizer it is paired with. Every template
is built so that rendering a conversation's first k messages (with ``add_generation_prompt``
before an assistant turn) is a string prefix of rendering all of them: encode.py relies on that
to find the assistant spans.
"""

from __future__ import annotations

import difflib
from typing import Any

from engine.core.errors import DatasetError

ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
# Formats that take no system role fold the system prompt into the first user turn.
_SYSTEM = (
    "{% set system = messages[0]['content'] "
    "if messages and messages[0]['role'] == 'system' else '' %}"
)
_FOLD = "((system + '\\n\\n') if (system and loop.index0 <= 1) else '')"

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama-3": (
        "{{ '<|begin_of_text|>' }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
    # Mistral [INST] format: generation starts right after ' [/INST]', so no extra prompt.
    "mistral": (
        "{{ '<s>' }}" + _SYSTEM + "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + " + _FOLD + " + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + '</s>' }}"
        "{% endif %}{% endfor %}"
    ),
    "gemma": (
        "{{ '<bos>' }}" + _SYSTEM + "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ '<start_of_turn>user\\n' + " + _FOLD + " + message['content'] | trim"
        " + '<end_of_turn>\\n' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '<start_of_turn>model\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    "phi-3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    # Alpaca has no end-of-turn marker of its own: a response ends with the tokenizer's eos.
    "alpaca": (
        "{% set system = messages[0]['content'] "
        "if messages and messages[0]['role'] == 'system' else '" + ALPACA_SYSTEM + "' %}"
        "{{ system }}{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + message['content'] }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '\\n\\n### Response:\\n' + message['content'] + (eos_token if eos_token else '') }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '\\n\\n### Response:\\n' }}{% endif %}"
    ),
}

_EOS: dict[str, str | None] = {
    "chatml": "<|im_end|>",
    "llama-3": "<|eot_id|>",
    "mistral": "</s>",
    "gemma": "<end_of_turn>",
    "phi-3": "<|end|>",
    "zephyr": "</s>",
    "alpaca": None,
}
SPECIAL_NAMES = ("auto", "model")


def template_names() -> list[str]:
    """Every name ``resolve_chat_template`` accepts."""
    return [*SPECIAL_NAMES, *CHAT_TEMPLATES]


def model_template(tokenizer: Any) -> str | None:
    """The tokenizer's own chat template, or None (older tokenizers keep a dict of named ones)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def resolve_chat_template(tokenizer: Any, name: str) -> str:
    """The Jinja string for ``name``: auto (model's own, else chatml), model, or a named one."""
    key = name.strip().lower()
    if key in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[key]
    if key in SPECIAL_NAMES:
        own = model_template(tokenizer)
        if own is not None:
            return own
        if key == "auto":
            return CHAT_TEMPLATES["chatml"]
        raise DatasetError(
            "chat_template: model was asked for, but this model's tokenizer has no chat template.",
            hint=f"Pick a named template: {', '.join(CHAT_TEMPLATES)} (or auto for chatml).",
        )
    close = difflib.get_close_matches(key, template_names(), n=1, cutoff=0.5)
    suggestion = f" Did you mean '{close[0]}'?" if close else ""
    raise DatasetError(
        f"Unknown chat template '{name}'.{suggestion}",
        hint=f"Known templates: {', '.join(template_names())}.",
    )


def template_eos(name: str) -> str | None:
    """End-of-turn string of a named template; None means "the tokenizer's eos token"."""
    return _EOS.get(name.strip().lower())


def end_of_turn(tokenizer: Any, chat_template: str) -> str | None:
    """Best stop string for a resolved template: a known marker it contains, else the eos token.

    For templates that are not ours (``model``), this looks for the markers it knows.
    """
    for marker in _EOS.values():
        if marker and marker in chat_template:
            return marker
    return getattr(tokenizer, "eos_token", None)

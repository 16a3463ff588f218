"""Turn one conversation into token ids and labels, training only on what the assistant says.

This does not rely on ``{% generation %}`` markers (most model templates lack them). Instead it
renders prefixes of the conversation with the same template: assistant turn i is trained from the
end of ``render(messages[:i], add_generation_prompt=True)`` to the end of
``render(messages[:i+1])``, i.e. the reply plus its end-of-turn marker, never the role header.
That is only sound when each prefix render is a string prefix of the full render, so it is checked.

Label conventions (the HF ones, so the trainer's usual shift-by-one applies):
- ``labels[t]`` is ``input_ids[t]`` when token t is trained, else -100;
- ``labels[0]`` is always -100: nothing before it can predict it. Packing relies on this, since
  every document's first token must not be predicted from the previous document;
- a token straddling a span boundary belongs to the side where it *starts* (its first character).
  At inference the prompt is tokenized on its own, so a token that starts in the prompt and runs
  into the reply can never be generated: it is not trained. A token that starts in the reply (or
  its end marker) and runs past the span is what the model must emit to finish: it is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from engine.core.errors import DatasetError
from engine.data.templates import CHAT_TEMPLATES

IGNORE_INDEX = -100
TrainOn = Literal["responses", "all"]


@dataclass(frozen=True)
class EncodedExample:
    """One training sequence; packed sequences also carry per-document positions and lengths."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    num_trained: int = 0
    # Set only on packed sequences: positions restart at 0 for each document, and seq_lengths
    # (summing to len(input_ids)) let the trainer build a block-diagonal attention mask.
    position_ids: list[int] | None = None
    seq_lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def template_label(chat_template: str) -> str:
    """A name for messages: the named template it is, or "the model's own chat template"."""
    for name, template in CHAT_TEMPLATES.items():
        if template == chat_template:
            return f"chat template '{name}'"
    return "the model's own chat template"


def render(
    tokenizer: Any, messages: list[dict[str, str]], chat_template: str, generation: bool
) -> str:
    """Render with HF ``apply_chat_template``; template failures become a DatasetError."""
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=generation
        )
    except Exception as exc:  # jinja2 TemplateError, raise_exception(...) inside templates
        raise DatasetError(
            f"{template_label(chat_template)} failed to render a conversation: {exc}",
            hint="Pick another chat template (chatml works with any model).",
        ) from exc
    if not isinstance(text, str):
        raise DatasetError(f"{template_label(chat_template)} did not render to text.")
    return text


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]], chat_template: str, full: str
) -> list[tuple[int, int]]:
    """Trained character spans ``[start, end)`` of ``full``: each reply + its end marker."""
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], chat_template, generation=True)
        upto = render(tokenizer, messages[: i + 1], chat_template, generation=False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise DatasetError(
                f"{template_label(chat_template)} does not render conversations incrementally "
                f"(rendering the first {i} messages is not a prefix of the whole), so the "
                "assistant turns cannot be located for assistant-only training.",
                hint="Use a named chat template (e.g. chatml), or set train_on: all.",
            )
        if len(upto) > len(prompt):
            spans.append((len(prompt), len(upto)))
    return spans


def tokenize_with_offsets(
    tokenizer: Any, text: str, max_length: int | None = None
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` (its start, when ``max_length`` is given:
    see ``tokenize_start``); needs a fast (Rust) tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise DatasetError(
            f"The tokenizer {type(tokenizer).__name__} is not a fast tokenizer, so tokens cannot "
            "be mapped back to characters for assistant-only training.",
            hint="Load the model's fast tokenizer (tokenizer.json), or set train_on: all.",
        )
    encoded = tokenize_start(tokenizer, text, max_length, special=False, offsets=True)
    return list(encoded["input_ids"]), [tuple(pair) for pair in encoded["offset_mapping"]]


# A row is cut, by characters, before the tokenizer sees it: a 200 MB row once cost the Rust
# tokenizer gigabytes (and aborted it). The first cut is generous (8 characters a token, where
# text averages about 4) and widens until the tokens it gives run GUARD_TOKENS past max_length,
# so that the tokens kept never come from near the cut, where a word is split.
CHARS_PER_TOKEN = 8
GUARD_TOKENS = 16


def tokenize_start(
    tokenizer: Any, text: str, max_length: int | None, *, special: bool, offsets: bool = False
) -> Any:
    """The tokenizer's encoding of ``text``, or of a prefix of it whose first ``max_length``
    tokens are those of the whole text: memory and time grow with max_length, not the row."""
    kwargs: dict[str, Any] = {"add_special_tokens": special}
    if offsets:
        kwargs["return_offsets_mapping"] = True
    if max_length is None:
        return tokenizer(text, **kwargs)
    cut = (max_length + GUARD_TOKENS) * CHARS_PER_TOKEN
    while cut < len(text):
        encoded = tokenizer(text[:cut], **kwargs)
        if len(encoded["input_ids"]) >= max_length + GUARD_TOKENS:
            return encoded
        cut *= 4  # few characters a token (long words, CJK, emoji bytes): widen the window
    return tokenizer(text, **kwargs)


def encode_conversation(
    tokenizer: Any,
    messages: list[dict[str, str]],
    chat_template: str,
    train_on: TrainOn,
    max_length: int,
) -> EncodedExample:
    """Render and tokenize once; label the tokens that start inside an assistant span."""
    check_max_length(max_length)
    full = render(tokenizer, messages, chat_template, generation=False)
    if train_on == "all":
        ids = list(tokenize_start(tokenizer, full, max_length, special=False)["input_ids"])
        labels = list(ids)
    elif train_on == "responses":
        spans = assistant_spans(tokenizer, messages, chat_template, full)
        ids, offsets = tokenize_with_offsets(tokenizer, full, max_length)
        labels = label_spans(ids, offsets, spans)
    else:
        raise DatasetError(
            f"Unknown train_on '{train_on}'.", hint="Use responses (assistant-only) or all."
        )
    return _finish(ids, labels, max_length)


def encode_text(tokenizer: Any, text: str, max_length: int) -> EncodedExample:
    """Plain text for continued pre-training: the tokenizer's specials (BOS) + eos, all trained."""
    check_max_length(max_length)
    ids = list(tokenize_start(tokenizer, text, max_length, special=True)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)  # so the model learns where a document ends
    return _finish(ids, list(ids), max_length)


def label_spans(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    # Tokens and spans are both in text order, so one forward walk assigns every token.
    labels = [IGNORE_INDEX] * len(ids)
    span = 0
    for t, (start, _end) in enumerate(offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if spans[span][0] <= start:
            labels[t] = ids[t]
    return labels


def _finish(ids: list[int], labels: list[int], max_length: int) -> EncodedExample:
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]  # keep the start: the prompt matters
    if labels:
        labels[0] = IGNORE_INDEX
    trained = sum(1 for label in labels if label != IGNORE_INDEX)
    return EncodedExample(input_ids=ids, labels=labels, truncated=truncated, num_trained=trained)


def check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise DatasetError(
            f"max_length must be at least 2 tokens, got {max_length}.",
            hint="Set model.max_seq_length to e.g. 2048.",
        )

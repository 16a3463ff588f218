"""Text generation for chat and for exact-match evaluation.

``stream_reply`` yields text deltas as tokens are generated (the chat pane and the REPL print
them as they come; closing it early stops the generation within a token); ``greedy_replies``
answers many prompts at once, left-padded, for evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

MAX_NEW_TOKENS = 8192  # a reply longer than this is a runaway, not a chat answer
MAX_TEMPERATURE = 100.0  # beyond this sampling is uniform noise; inf would divide logits by inf


def generation_problems(temperature: float, top_p: float, max_new_tokens: int) -> list[str]:
    """What is wrong with these sampling settings, named as the CLI flags; empty when valid.

    One rule for `finetty chat`'s flags and the chat pane's inputs. NaN compares false with
    everything, so each bound is written so that NaN fails it.
    """
    problems = []
    if not 0 <= temperature <= MAX_TEMPERATURE:
        problems.append(
            f"--temperature {temperature}: must be a number from 0 (greedy) to {MAX_TEMPERATURE:g}"
        )
    if not 0 < top_p <= 1:
        problems.append(f"--top-p {top_p}: must be above 0 and at most 1 (1 keeps every token)")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        problems.append(f"--max-new-tokens {max_new_tokens}: must be from 1 to {MAX_NEW_TOKENS}")
    return problems


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
    )


def stream_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    chat_template: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> Iterator[str]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    stop = threading.Event()

    class Stopped(StoppingCriteria):
        """Ends generation at the next token once the consumer has closed this stream."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            # On the ids' device: transformers ORs it with its own criteria there (on a GPU a
            # CPU tensor raised "Expected all tensors to be on the same device").
            return torch.full(
                (input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device
            )

    text = render_prompt(tokenizer, messages, chat_template)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = temperature > 0
    kwargs = dict(
        **inputs,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([Stopped()]),
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if sampling:
        kwargs.update(temperature=temperature, top_p=top_p)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, name="finetty-generate", daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        # Closed early (the user left mid-reply): stop at the next token instead of generating
        # the rest unseen, and return only once the model is free again.
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


def greedy_replies(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    chat_template: str | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    stopping_criteria: Any = None,
) -> list[str]:
    """``stopping_criteria``: transformers' StoppingCriteriaList, called after every token
    (engine.train.evaluate reports progress and honours a stop request through it)."""
    import torch

    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                render_prompt(tokenizer, [{"role": "user", "content": p}], chat_template)
                for p in prompts[start : start + batch_size]
            ]
            batch = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,
                    stopping_criteria=stopping_criteria,
                )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            replies.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return replies

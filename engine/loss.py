"""Causal-LM loss that never materialises the full logits.

The decoder's hidden states are gathered at trained positions only (with assistant-only loss
that is a small share of the tokens), and the output head plus cross-entropy run in chunks
under activation checkpointing, so at most one chunk of logits exists at a time, in the forward
and in the backward. It computes the same function as ``CrossEntropy(model(...).logits)``;
tests/engine/test_loss.py checks loss and gradients against the plain path.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100
# Architectures whose logits are exactly lm_head(final hidden state), optionally soft-capped.
CHUNKABLE = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "smollm3",
    "olmo2",
}
CHUNK_ROWS = 4096


def supports_chunked_loss(model: Any) -> bool:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in CHUNKABLE:
        return False
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return False
    return (
        callable(getattr(model, "get_decoder", None)) and model.get_output_embeddings() is not None
    )


def full_logits_loss_sum(model: Any, inputs: dict[str, Any], labels: Any) -> Any:
    """Reference path: the model's own logits, then summed cross-entropy over trained tokens."""
    import torch.nn.functional as F

    logits = model(**inputs, use_cache=False).logits
    shift_logits = logits[:, :-1, :].float()
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def chunked_loss_sum(
    model: Any, inputs: dict[str, Any], labels: Any, chunk_rows: int = CHUNK_ROWS
) -> Any:
    import torch
    from torch.utils.checkpoint import checkpoint

    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:].reshape(-1)
    hidden = hidden[:, :-1, :].reshape(-1, hidden.size(-1))
    keep = targets != IGNORE
    hidden, targets = hidden[keep], targets[keep]
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.size(0), chunk_rows):
        total = total + checkpoint(
            _head_loss, head, hidden[start : start + chunk_rows], targets[start : start + chunk_rows], cap,
            use_reentrant=False,
        )  # fmt: skip
    return total


def _head_loss(head: Any, hidden: Any, targets: Any, cap: float | None) -> Any:
    import torch
    import torch.nn.functional as F

    logits = head(hidden).float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, targets, reduction="sum")

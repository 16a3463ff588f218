"""Causal-LM loss that never materialises the full logits.

The decoder's hidden states are gathered at trained positions only (with assistant-only loss
that is a small share of the tokens), and the output head plus cross-entropy run in chunks
under activation checkpointing, so at most one chunk of logits exists at a time, in the forward
and in the backward. It computes the same function as ``CrossEntropy(model(...).logits)``;
tests/engine/speed/test_loss.py checks loss and gradients against the plain path.

With a frozen head (LoRA, QLoRA), each chunk's gradient is computed in the forward itself
(softmax minus one-hot, times the head) and the chunk's logits are dropped at once: the head's
matmul runs twice instead of three times (no recompute), and no chunk of logits outlives its
own loop turn. Chunks are sized so that one chunk's fp32 logits stay near LOGITS_BUDGET.
On a GPU with liger-kernel the same is done by Liger's fused linear cross-entropy, whose
Triton kernel computes softmax, loss and gradient of a chunk in one pass over its logits
instead of PyTorch's six (the same function: tests/engine/test_gpu.py compares losses).
"""

from __future__ import annotations

import functools
from typing import Any

from engine.plan.loss_chunks import CHUNKABLE, chunk_rows

IGNORE = -100


# Liger's kernel for the frozen-head loss on a GPU (bench/gpu_throughput.py --no-liger-loss
# turns it off for an A/B against FrozenHeadLoss).
USE_LIGER_LOSS = True


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
    model: Any,
    inputs: dict[str, Any],
    labels: Any,
    rows: int | None = None,
    trained_index: Any = None,
) -> Any:
    """``trained_index``: the flat positions of ``labels[:, 1:]`` that are trained, when the
    caller knows them (engine.train.tasks.sft.collate does, on the host); else found here."""
    import torch
    from torch.utils.checkpoint import checkpoint

    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:].reshape(-1)
    hidden = hidden[:, :-1, :].reshape(-1, hidden.size(-1))
    if trained_index is None:
        trained_index = (targets != IGNORE).nonzero().squeeze(1)
    hidden, targets = hidden.index_select(0, trained_index), targets.index_select(0, trained_index)
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    rows = rows or chunk_rows(head.weight.shape[0])
    if _frozen_plain_head(head):
        if USE_LIGER_LOSS and _liger_fits(hidden, head):
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

            return liger_fused_linear_cross_entropy(
                hidden, head.weight, targets, bias=head.bias, reduction="sum", softcap=cap
            )
        return _frozen_head_loss().apply(hidden, targets, head.weight, head.bias, cap, rows)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.size(0), rows):
        total = total + checkpoint(
            _head_loss,
            head,
            hidden[start : start + rows],
            targets[start : start + rows],
            cap,
            use_reentrant=False,
        )
    return total


def _liger_fits(hidden: Any, head: Any) -> bool:
    """Liger's fused linear cross-entropy (one Triton pass per chunk for softmax, loss and
    gradient) on a GPU, where hidden states and head share a 16-bit dtype."""
    import importlib.util

    import torch

    return (
        hidden.is_cuda
        and hidden.dtype in (torch.bfloat16, torch.float16)
        and head.weight.dtype == hidden.dtype
        and importlib.util.find_spec("liger_kernel") is not None
    )


def _frozen_plain_head(head: Any) -> bool:
    import torch

    params = list(head.parameters())
    return (
        type(head) is torch.nn.Linear
        and not any(param.requires_grad for param in params)
        and head.weight.dtype.is_floating_point
    )


def _frozen_head_forward(
    ctx: Any, hidden: Any, targets: Any, weight: Any, bias: Any, cap: float | None, rows: int
) -> Any:
    import torch

    from engine.speed.casting import NoAutocast, compute_dtype, to_dtype

    want_grad = ctx.needs_input_grad[0]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad = torch.empty_like(hidden) if want_grad else None
    # The matmuls run in the dtype the head's own forward would use (autocast's, if on); the
    # head is cast once, not once per chunk.
    dtype = compute_dtype(hidden)
    h, w = to_dtype(hidden, dtype), to_dtype(weight, dtype)
    b = None if bias is None else to_dtype(bias, dtype)
    for start in range(0, hidden.size(0), rows):
        chunk, target = h[start : start + rows], targets[start : start + rows]
        with NoAutocast(hidden.device.type):
            logits = (torch.addmm(b, chunk, w.t()) if b is not None else chunk @ w.t()).float()
        if cap:
            tanh = torch.tanh(logits / cap)
            logits = tanh * cap
        lse = torch.logsumexp(logits, dim=-1)
        total += (lse - logits.gather(1, target[:, None]).squeeze(1)).sum()
        if not want_grad:
            continue
        # d(lse - logit[target]) / d logits = softmax - one_hot, computed in place.
        probs = logits.sub_(lse[:, None]).exp_()
        probs[torch.arange(target.numel(), device=probs.device), target] -= 1.0
        if cap:
            probs.mul_(1.0 - tanh.square_())
        with NoAutocast(hidden.device.type):
            grad[start : start + rows] = to_dtype(probs.to(dtype) @ w, grad.dtype)
    ctx.save_for_backward(grad if want_grad else None)
    return total


def _head_loss(head: Any, hidden: Any, targets: Any, cap: float | None) -> Any:
    import torch
    import torch.nn.functional as F

    logits = head(hidden).float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, targets, reduction="sum")


@functools.cache
def _frozen_head_loss() -> Any:
    """The autograd Function, built on first use: importing this module must not import torch
    (``finetty estimate`` reads CHUNKABLE without it)."""
    import torch

    class FrozenHeadLoss(torch.autograd.Function):
        """Summed cross-entropy of ``hidden @ weight^T`` against ``targets`` for a frozen head,
        the input gradient computed chunk by chunk during the forward."""

        @staticmethod
        def forward(ctx, hidden, targets, weight, bias, cap, rows):  # type: ignore[override]
            return _frozen_head_forward(ctx, hidden, targets, weight, bias, cap, rows)

        @staticmethod
        def backward(ctx, grad_total):  # type: ignore[override]
            (grad,) = ctx.saved_tensors
            if grad is not None:
                # The scale (1 / trained tokens) in fp32, a chunk at a time: rounding it to
                # bf16 first would bias every gradient by up to 0.4%; float() would sync.
                for part in grad.split(4096):
                    part.copy_(part.float() * grad_total)
            return grad, None, None, None, None, None

    return FrozenHeadLoss

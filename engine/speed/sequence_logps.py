"""Log-probabilities of the response tokens, per sequence, without the full logits.

Preference losses (DPO, ORPO, KTO, SimPO) read one number per sequence: the summed (or, for
the length-normalised forms, the mean) log-probability of its response tokens. The naive way,
``log_softmax(model(...).logits).gather(labels)``, holds a [batch, tokens, vocab] tensor in
fp32, twice for a pair. Here, as in engine.speed.loss, the decoder's hidden states are taken
at response positions only, and the head plus log-softmax run a chunk of rows at a time under
activation checkpointing, so at most one chunk of logits exists at a time, forward and
backward. With a frozen head (LoRA, QLoRA) the states' gradient is computed in the forward,
chunk by chunk (one-hot minus softmax, times the head), as engine.speed.loss does for SFT: two
head matmuls instead of three. It computes the same function as the naive way; tests/engine/
speed/test_sequence_logps.py checks values and gradients against it in float64 and float32,
and against TRL 1.16's fused LM head on a tiny Llama.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from engine.plan.loss_chunks import chunk_rows
from engine.speed.loss import IGNORE


@dataclass(frozen=True)
class SequenceLogps:
    """Response log-probs of a batch, the labels already shifted (position t scores token t+1).

    ``token``: [batch, tokens - 1], 0 outside the response; ``mask``: where the response is;
    ``log_sum_sq_probs``: log Σ_v p_v² per position (WPO's normaliser), when asked for, else
    None; it carries no gradient, as in TRL.
    """

    token: Any
    mask: Any
    log_sum_sq_probs: Any = None

    @property
    def total(self) -> Any:
        """Summed response log-prob of each sequence: [batch]."""
        return self.token.sum(dim=1)

    @property
    def count(self) -> Any:
        """Response tokens of each sequence: [batch]."""
        return self.mask.sum(dim=1)

    @property
    def mean(self) -> Any:
        """Mean response log-prob of each sequence (0 for one without response tokens)."""
        return self.total / self.count.clamp(min=1)

    def within(self, mask: Any) -> SequenceLogps:
        """These log-probs at the positions of ``mask`` only ([batch, tokens - 1], shifted like
        ``self.mask``): ORPO scores the chosen side once over prompt and response, for its NLL,
        and takes the response's part from the same pass."""
        keep = self.mask & mask
        squares = None if self.log_sum_sq_probs is None else self.log_sum_sq_probs * keep
        return SequenceLogps(token=self.token * keep, mask=keep, log_sum_sq_probs=squares)


def response_logps(
    hidden: Any,
    head: Any,
    labels: Any,
    *,
    cap: float | None = None,
    rows: int | None = None,
    with_log_sum_sq_probs: bool = False,
) -> SequenceLogps:
    """Log-probs of ``labels`` under ``head(hidden)``, at the positions whose label is not -100.

    ``hidden``: [batch, tokens, hidden] final hidden states; ``head``: the output layer (any
    module mapping hidden to logits); ``labels``: [batch, tokens], unshifted, as a causal LM
    takes them; ``cap``: Gemma 2's final logit soft-capping; ``rows``: rows per chunk.
    """
    import torch

    targets = labels[:, 1:]
    mask = targets != IGNORE
    flat = mask.reshape(-1).nonzero().squeeze(1)
    states = hidden[:, :-1, :].reshape(-1, hidden.size(-1)).index_select(0, flat)
    picked = targets.reshape(-1).index_select(0, flat)
    vocab = getattr(getattr(head, "weight", None), "shape", (0,))[0]
    rows = rows or chunk_rows(vocab)
    if _frozen_linear(head):
        function = _frozen_head_logps()
        chunk_logps, chunk_squares = function.apply(
            states, picked, head.weight, head.bias, cap, rows, with_log_sum_sq_probs
        )
        logps, squares = [chunk_logps], [chunk_squares]
    else:
        logps, squares = _checkpointed_logps(head, states, picked, cap, rows, with_log_sum_sq_probs)
    dtype = logps[0].dtype if logps else torch.promote_types(hidden.dtype, torch.float32)
    token = _scatter(logps, flat, targets.shape, dtype, hidden.device)
    log_sum_sq = (
        _scatter(squares, flat, targets.shape, dtype, hidden.device).detach()
        if with_log_sum_sq_probs
        else None
    )
    return SequenceLogps(token=token, mask=mask, log_sum_sq_probs=log_sum_sq)


def _checkpointed_logps(
    head: Any, states: Any, picked: Any, cap: float | None, rows: int, with_squares: bool
) -> tuple[list[Any], list[Any]]:
    """A trainable (or unusual) head: each chunk under activation checkpointing, so its
    logits are rebuilt for the backward instead of kept."""
    from torch.utils.checkpoint import checkpoint

    logps, squares = [], []
    for start in range(0, states.size(0), rows):
        chunk_logps, chunk_squares = checkpoint(
            _chunk_logps,
            head,
            states[start : start + rows],
            picked[start : start + rows],
            cap,
            with_squares,
            use_reentrant=False,
        )
        logps.append(chunk_logps)
        squares.append(chunk_squares)
    return logps, squares


def model_response_logps(
    model: Any, inputs: dict[str, Any], labels: Any, **options: Any
) -> SequenceLogps:
    """``response_logps`` of a causal LM that engine.speed.loss.supports_chunked_loss accepts:
    its decoder runs once, then its head chunk by chunk."""
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    cap = getattr(model.config, "final_logit_softcapping", None)
    return response_logps(hidden, model.get_output_embeddings(), labels, cap=cap, **options)


def _chunk_logps(
    head: Any, states: Any, targets: Any, cap: float | None, with_squares: bool
) -> tuple[Any, Any]:
    import torch

    logits = head(states)
    # fp16/bf16 logits are scored in fp32 (as the SFT loss does); fp64 stays fp64 for tests.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if cap:
        logits = torch.tanh(logits / cap) * cap
    lse = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(1, targets[:, None]).squeeze(1) - lse
    if not with_squares:
        return logps, logps.new_zeros(())
    with torch.no_grad():
        squares = torch.logsumexp(2 * (logits - lse[:, None]), dim=-1)
    return logps, squares


def _scatter(parts: list[Any], flat: Any, shape: Any, dtype: Any, device: Any) -> Any:
    """The chunks' values put back at their [batch, tokens - 1] positions, 0 elsewhere."""
    import torch

    full = torch.zeros(shape[0] * shape[1], dtype=dtype, device=device)
    if parts:
        full = full.index_put((flat,), torch.cat(parts))
    return full.view(shape[0], shape[1])


def _frozen_linear(head: Any) -> bool:
    """A plain nn.Linear that trains nothing (LoRA, QLoRA): its gradient path is a matmul."""
    import torch

    return (
        type(head) is torch.nn.Linear
        and not any(param.requires_grad for param in head.parameters())
        and head.weight.dtype.is_floating_point
    )


def _frozen_head_forward(
    ctx: Any,
    states: Any,
    targets: Any,
    weight: Any,
    bias: Any,
    cap: float | None,
    rows: int,
    with_squares: bool,
) -> tuple[Any, Any]:
    import torch

    from engine.speed.casting import NoAutocast, compute_dtype, to_dtype

    want_grad = ctx.needs_input_grad[0]
    dtype = compute_dtype(states)
    scored = torch.promote_types(dtype, torch.float32)
    h, w = to_dtype(states, dtype), to_dtype(weight, dtype)
    b = None if bias is None else to_dtype(bias, dtype)
    count = states.size(0)
    logps = torch.empty(count, dtype=scored, device=states.device)
    squares = torch.zeros(count if with_squares else 0, dtype=scored, device=states.device)
    grad = torch.empty_like(states) if want_grad else None
    for start in range(0, count, rows):
        end = min(start + rows, count)
        chunk, target = h[start:end], targets[start:end]
        with NoAutocast(states.device.type):
            logits = (torch.addmm(b, chunk, w.t()) if b is not None else chunk @ w.t()).to(scored)
        if cap:
            tanh = torch.tanh(logits / cap)
            logits = tanh * cap
        logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # now log-softmax
        logps[start:end] = logits.gather(1, target[:, None]).squeeze(1)
        if with_squares:
            squares[start:end] = torch.logsumexp(2 * logits, dim=-1)
        if grad is None:
            continue
        # d log p[target] / d logits = one_hot - softmax, computed in place.
        step = logits.exp_().neg_()
        step[torch.arange(end - start, device=step.device), target] += 1.0
        if cap:
            step.mul_(1.0 - tanh.square_())
        with NoAutocast(states.device.type):
            grad[start:end] = to_dtype(step.to(dtype) @ w, grad.dtype)
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(squares)
    return logps, squares


@functools.cache
def _frozen_head_logps() -> Any:
    """The autograd Function for a frozen head, built on first use (no torch at import)."""
    import torch

    class FrozenHeadLogps(torch.autograd.Function):
        """Log-probs of ``targets`` under ``states @ weight^T``, the states' gradient computed
        chunk by chunk in the forward: the head's matmul runs twice, not three times, and no
        chunk of logits outlives its loop turn."""

        @staticmethod
        def forward(ctx, states, targets, weight, bias, cap, rows, with_squares):  # type: ignore[override]
            return _frozen_head_forward(ctx, states, targets, weight, bias, cap, rows, with_squares)

        @staticmethod
        def backward(ctx, grad_logps, _grad_squares):  # type: ignore[override]
            (grad,) = ctx.saved_tensors
            if grad is not None:
                grad = grad * grad_logps[:, None].to(grad.dtype)
            return grad, None, None, None, None, None, None

    return FrozenHeadLogps

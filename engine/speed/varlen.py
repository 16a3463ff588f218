"""Per-document attention for packed batches, without a mask: PyTorch's variable-length flash
attention (``torch.nn.attention.varlen``).

A packed row holds several documents, and each must attend only to itself. transformers'
SDPA path builds a block-diagonal 4-D mask for that, which takes SDPA off its causal flash
kernels onto masked ones (TRL's padding-free collator with SDPA ran at 0.46x). Here the batch's
rows are laid end to end and each document is its own sequence (``cu_seq_lens``), which is what
flash attention's varlen kernels are for; flash-attn itself need not be installed.

The trainer's collate passes ``cu_seq_lens_q/k`` and ``max_length_q/k`` (transformers' own
names for these, which its flash-attention path reads too) as model keyword arguments; they
reach every attention call. Calls without them (unpacked batches, generation), or with
dropout, soft-capping or a sliding window, go to transformers' SDPA path unchanged.
On a CPU, each document runs through causal SDPA in turn: the same function, for tests.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from typing import Any

NAME = "finetty_varlen"


def register() -> str:
    """Make ``NAME`` a valid ``attn_implementation`` (attention and mask functions)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_attention_forward)
    # Masks stay SDPA's: the fallback calls need them; packed calls ignore them.
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_for(model: Any) -> None:
    """Switch a loaded model (or a PEFT wrapper around it) to varlen attention."""
    register()
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    config._attn_implementation = NAME
    for sub in ("text_config",):  # multimodal wrappers keep the language model's config apart
        inner = getattr(config, sub, None)
        if inner is not None:
            inner._attn_implementation = NAME


def varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """``query``: (batch, heads, seq, dim), as transformers passes it; returns (batch, seq,
    heads, dim), as its attention functions do."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_seq = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu_seq is None or max_len is None or dropout or softcap or sliding_window:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, seq, dim = query.shape
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(batch * seq, heads, dim)
    k = key.transpose(1, 2).reshape(batch * seq, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * seq, kv_heads, dim)
    scale = scaling if scaling is not None else dim**-0.5
    if q.is_cuda:
        out = _flash_varlen(q, k, v, cu_seq, int(max_len), scale)
    else:
        out = _documents_one_by_one(q, k, v, cu_seq, scale)
    return out.view(batch, seq, heads, dim), None


def _flash_varlen(q: Any, k: Any, v: Any, cu_seq: Any, max_len: int, scale: float) -> Any:
    from torch.nn.attention.varlen import varlen_attn

    params = _varlen_params()
    if k.shape[1] != q.shape[1] and "enable_gqa" not in params:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    extra: dict[str, Any] = {"scale": scale}
    if k.shape[1] != q.shape[1]:
        extra["enable_gqa"] = True
    if "window_size" in params:
        extra["window_size"] = (-1, 0)  # causal: no key after the query
    else:
        extra["is_causal"] = True  # PyTorch 2.9's signature
    return varlen_attn(q, k, v, cu_seq, cu_seq, max_len, max_len, **extra)


@functools.cache
def _varlen_params() -> frozenset[str]:
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _documents_one_by_one(q: Any, k: Any, v: Any, cu_seq: Any, scale: float) -> Any:
    import torch
    import torch.nn.functional as F

    bounds = cu_seq.tolist()
    parts = []
    groups = q.shape[1] // k.shape[1]
    for start, end in itertools.pairwise(bounds):
        # (tokens, heads, dim) -> (1, heads, tokens, dim) for SDPA
        qd, kd, vd = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        if groups > 1:
            kd, vd = kd.repeat_interleave(groups, dim=1), vd.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale)
        parts.append(out.squeeze(0).transpose(0, 1))
    return torch.cat(parts, dim=0)


def document_bounds(positions: Any) -> tuple[Any, int]:
    """Where each document starts in a batch of position ids (rows, width) laid end to end,
    as int32 cumulative bounds, and the longest document. A document starts where a position
    does not follow the one before, the rule transformers' mask path uses
    (masking_utils.find_packed_sequence_indices), so both paths see the same documents; each
    row's padding, positions 0, 1, ..., is a document of its own."""
    import torch

    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    first = starts.reshape(-1).nonzero().squeeze(1)
    bounds = torch.cat([first, first.new_tensor([positions.numel()])])
    return bounds.to(torch.int32), int((bounds[1:] - bounds[:-1]).max())

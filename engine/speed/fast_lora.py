"""LoRA projections as one autograd function: the base matmul and the adapter in three GEMMs.

PEFT runs ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as separate ops: the adapter's
output is written, scaled in a second pass and added in a third, forward and backward, and the
backward adds the base and adapter input gradients in a fourth. Here the adapter's product is
accumulated straight into the base output by cuBLAS (``addmm`` with beta 1 and alpha =
scaling), and its input gradient straight into the base's, so those passes are gone. On the
8B shape they were 14% of a step's GPU time (bench/RESULTS.md, devI).

It computes the same function as PEFT's forward, for the case it takes over: one active plain
LoRA adapter (no DoRA or other variant, no LoRA bias, not merged), on a frozen ``nn.Linear`` or
a frozen bitsandbytes 4-bit base. Anything else runs PEFT's own forward. The base weight never
gets a gradient (it is frozen); the adapter's do, in the adapter's dtype.
tests/engine/speed/test_fast_path.py checks outputs and gradients against PEFT's path.

``skip_base``: while gradient checkpointing recomputes a decoder layer, the output of its last
projection (down_proj) is never read, only its backward is needed, so engine.speed.layer_checkpoint
asks for no output at all (zeros that take no memory): only the adapter's small ``x @ A^T`` is
computed, for lora_B's gradient. The backward is the same either way.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from engine.speed.casting import NoAutocast, compute_dtype, to_dtype

SKIP_BASE_ATTR = "_finetty_skip_base"  # set on a fused module: its forward skips the base matmul
FUSED_ATTR = "_finetty_fused"
_RESOLVED_ATTR = "_finetty_resolved"


_recompute = threading.local()  # .keep: inside keeping_dequantized_weights()


@contextlib.contextmanager
def keeping_dequantized_weights() -> Iterator[None]:
    """While a checkpointed layer is recomputed just before its backward: 4-bit projections
    keep the weight they dequantize for the forward and reuse it in the backward (one layer's
    weights at a time), instead of dequantizing it twice."""
    previous = getattr(_recompute, "keep", False)
    _recompute.keep = True
    try:
        yield
    finally:
        _recompute.keep = previous


def dequantized_weights_kept() -> bool:
    """Inside keeping_dequantized_weights() on this thread."""
    return getattr(_recompute, "keep", False)


def is_4bit(base: Any) -> bool:
    weight = getattr(base, "weight", None)
    return getattr(weight, "quant_state", None) is not None and hasattr(base, "compute_dtype")


def dense_or_4bit(base: Any) -> bool:
    """A plain float nn.Linear or a bitsandbytes 4-bit one (the 8-bit Linear8bitLt, also an
    nn.Linear subclass, holds int8 weights that cannot simply be cast)."""
    if is_4bit(base):
        return True
    return type(base) is torch.nn.Linear and base.weight.dtype.is_floating_point


def base_weight(base: Any, dtype: torch.dtype, four_bit: bool | None = None) -> torch.Tensor:
    """The base layer's weight as a dense [out, in] matrix in ``dtype`` (4-bit: dequantized)."""
    weight = base.weight
    if is_4bit(base) if four_bit is None else four_bit:
        import bitsandbytes.functional as bnbf

        weight = bnbf.dequantize_4bit(weight.data, weight.quant_state)
    return to_dtype(weight, dtype)


class LoraLinearFunction(torch.autograd.Function):
    """out = x @ W^T + bias + scaling * (dropout(x) @ A^T) @ B^T, with W and bias frozen."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        dropped: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        base: Any,
        skip_base: bool,
        four_bit: bool,
    ) -> torch.Tensor:
        dtype = compute_dtype(x)
        shape = x.shape
        x2 = to_dtype(x.reshape(-1, shape[-1]), dtype)
        d2 = x2 if dropped is None else to_dtype(dropped.reshape(-1, shape[-1]), dtype)
        a, b = to_dtype(lora_a, dtype), to_dtype(lora_b, dtype)
        ctx.weight = None
        with NoAutocast(x.device.type):
            t = d2 @ a.t()  # [N, r]
            if skip_base:  # nothing reads this output: only t is needed, for lora_B's gradient
                out = x2.new_zeros((), dtype=dtype).expand(x2.shape[0], b.shape[0])
            else:
                weight = base_weight(base, dtype, four_bit)
                bias = base.bias
                out = (
                    torch.addmm(to_dtype(bias, dtype), x2, weight.t())
                    if bias is not None
                    else torch.mm(x2, weight.t())
                )
                out.addmm_(t, b.t(), alpha=scaling)
                if four_bit and ctx.needs_input_grad[0] and dequantized_weights_kept():
                    ctx.weight = weight
        ctx.save_for_backward(d2, t, a, b)
        ctx.base, ctx.scaling, ctx.separate_dropout = base, scaling, dropped is not None
        ctx.x_shape, ctx.dtype, ctx.four_bit = shape, dtype, four_bit
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        d2, t, a, b = ctx.saved_tensors
        scaling, dtype = ctx.scaling, ctx.dtype
        g = to_dtype(grad_out.reshape(-1, grad_out.shape[-1]), dtype)
        need_x, need_dropped, need_a, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_dropped = grad_a = grad_b = None
        gb = g @ b  # [N, r]
        if need_b:
            grad_b = to_dtype((g.t() @ t).mul_(scaling), ctx.b_dtype)
        if need_a:
            grad_a = to_dtype((gb.t() @ d2).mul_(scaling), ctx.a_dtype)
        if need_x:
            weight = (
                ctx.weight if ctx.weight is not None else base_weight(ctx.base, dtype, ctx.four_bit)
            )
            ctx.weight = None
            grad_x = g @ weight
            if not ctx.separate_dropout:
                grad_x.addmm_(gb, a, alpha=scaling)
            grad_x = grad_x.view(ctx.x_shape)
        if ctx.separate_dropout and need_dropped:
            grad_dropped = torch.mm(gb, a).mul_(scaling).view(ctx.x_shape)
        return grad_x, grad_dropped, grad_a, grad_b, None, None, None, None


class FrozenLinearFunction(torch.autograd.Function):
    """A frozen projection whose output is never read (the recompute's down_proj): no forward
    matmul, and a backward that gives the input its gradient through the frozen weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, base: Any, out_features: int) -> torch.Tensor:  # type: ignore[override]
        ctx.base, ctx.dtype, ctx.x_shape = base, compute_dtype(x), x.shape
        return x.new_zeros((), dtype=ctx.dtype).expand(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        g = to_dtype(grad_out.reshape(-1, grad_out.shape[-1]), ctx.dtype)
        grad_x = g @ base_weight(ctx.base, ctx.dtype)
        return grad_x.view(ctx.x_shape), None, None


def fast_path_reason(module: Any) -> str | None:
    """Why this PEFT LoRA module cannot take the fused path (None when it can)."""
    base = module.get_base_layer()
    if not dense_or_4bit(base):
        return f"base layer {type(base).__name__}"
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return "base weight trains"
    if getattr(module, "fan_in_fan_out", False):
        return "fan_in_fan_out"
    if len(module.active_adapters) != 1:
        return "several active adapters"
    name = module.active_adapters[0]
    if name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name):
        return "DoRA or another LoRA variant"
    if getattr(module, "lora_bias", {}).get(name):
        return "lora_bias"
    if name not in module.lora_A or not isinstance(module.lora_A[name], torch.nn.Linear):
        return "adapter is not a linear pair"
    return None


@dataclass(frozen=True)
class ResolvedAdapter:
    """A module's adapter, looked up once: PEFT's properties and nn.Module attribute lookups
    cost more host time than the small adapter matmuls themselves on a small model."""

    active: Any  # the module's _active_adapter when resolved: a change means look again
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scaling: float
    dropout: Any  # an nn.Dropout with p > 0, else None
    base: Any
    four_bit: bool


def _resolve(module: Any) -> ResolvedAdapter | None:
    if fast_path_reason(module) is not None:
        return None
    name = module.active_adapters[0]
    dropout = module.lora_dropout[name]
    base = module.get_base_layer()
    resolved = ResolvedAdapter(
        module._active_adapter,
        module.lora_A[name].weight,
        module.lora_B[name].weight,
        float(module.scaling[name]),
        dropout if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0 else None,
        base,
        is_4bit(base),
    )
    module.__dict__[_RESOLVED_ATTR] = resolved
    return resolved


def current_adapter(module: Any) -> ResolvedAdapter | None:
    """The module's active adapter as the fused path runs it; None when PEFT's own forward
    must run (adapters disabled or merged, or the adapter changed to one it cannot take)."""
    # Plain attributes (instance or class defaults), not PEFT's properties: cheaper per call.
    if module._disable_adapters or module.merged_adapters:
        return None
    resolved = module.__dict__.get(_RESOLVED_ATTR)
    if resolved is None or resolved.active is not module._active_adapter:
        resolved = _resolve(module)
    return resolved


def fused_forward(module: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Replacement for a PEFT LoRA module's forward; falls back to PEFT's own where it must."""
    resolved = None if args or kwargs else current_adapter(module)
    if resolved is None:
        return type(module).forward(module, x, *args, **kwargs)
    dropout = resolved.dropout
    return LoraLinearFunction.apply(
        x,
        dropout(x) if dropout is not None and dropout.training else None,
        resolved.lora_a,
        resolved.lora_b,
        resolved.scaling,
        resolved.base,
        module.__dict__.get(SKIP_BASE_ATTR, False),
        resolved.four_bit,
    )


def skip_base_forward(base: Any, x: torch.Tensor) -> torch.Tensor:
    """A frozen, un-adapted projection under skip_base: see FrozenLinearFunction."""
    return FrozenLinearFunction.apply(x, base, base.out_features)


def apply_fused_lora(model: Any) -> tuple[int, dict[str, int]]:
    """Route every eligible LoRA module through LoraLinearFunction. Returns how many were
    patched and, for the rest, how many fell back for each reason."""
    import types

    from peft.tuners.lora import LoraLayer

    patched, skipped = 0, {}
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        reason = fast_path_reason(module)
        if reason is None:
            module.forward = types.MethodType(fused_forward, module)
            setattr(module, FUSED_ATTR, True)
            patched += 1
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    return patched, skipped

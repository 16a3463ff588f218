"""LoRA projections that read the same input, run as one autograd function: q/k/v, gate/up.

A decoder layer calls q_proj, k_proj and v_proj on one tensor, and gate_proj and up_proj on
another. As separate fused projections (engine.speed.fast_lora) each is a Python call with its own
adapter-A GEMM, and in the backward another Python call, another A-gradient GEMM and an add of
its input gradient into the others'. On a small model those per-call costs, not the GEMMs, set
the step time (bench/RESULTS.md, devM and devP). Grouped, the first member called computes the
whole group: one GEMM for all adapters' ``x @ A^T`` (their A matrices stacked), the base GEMMs
as before; the backward is one call that accumulates every member's input gradient in place,
the adapters' part of it in one GEMM. The other members, called next with the same input
tensor, return the outputs already computed.

It computes the same function as the members one by one (tests/engine/speed/test_grouped_lora.py:
outputs, loss and every gradient). A member falls back to its own fused forward whenever the
group cannot run: another input, extra arguments, adapters disabled or changed, dropout active,
a base matmul skipped by the checkpoint recompute.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.speed.casting import NoAutocast, compute_dtype, to_dtype
from engine.speed.fast_lora import (
    FUSED_ATTR,
    SKIP_BASE_ATTR,
    ResolvedAdapter,
    base_weight,
    current_adapter,
    dequantized_weights_kept,
    fused_forward,
)

# Decoder layers whose attention calls q/k/v, and whose MLP calls gate/up, on one tensor.
GROUPED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
# Members in the order the decoder layer calls them, each group on one input.
GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


class GroupedLoraFunction(torch.autograd.Function):
    """out_i = x @ W_i^T + bias_i + s_i * (x @ A_i^T) @ B_i^T for every member i, W_i frozen."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, members: tuple[ResolvedAdapter, ...], *adapters: torch.Tensor
    ):  # type: ignore[override]
        count = len(members)
        dtype = compute_dtype(x)
        shape = x.shape
        x2 = to_dtype(x.reshape(-1, shape[-1]), dtype)
        a_list = [to_dtype(a, dtype) for a in adapters[:count]]
        b_list = [to_dtype(b, dtype) for b in adapters[count:]]
        keep = ctx.needs_input_grad[0] and dequantized_weights_kept()
        ctx.weights = [None] * count
        outs = []
        with NoAutocast(x.device.type):
            a_all = torch.cat(a_list)
            t = x2 @ a_all.t()  # [N, sum of ranks]
            start = 0
            for index, (member, b) in enumerate(zip(members, b_list, strict=True)):
                rank = b.shape[1]
                weight = base_weight(member.base, dtype, member.four_bit)
                bias = member.base.bias
                out = (
                    torch.addmm(to_dtype(bias, dtype), x2, weight.t())
                    if bias is not None
                    else torch.mm(x2, weight.t())
                )
                out.addmm_(t[:, start : start + rank], b.t(), alpha=member.scaling)
                if member.four_bit and keep:
                    ctx.weights[index] = weight
                outs.append(out.view(*shape[:-1], out.shape[-1]))
                start += rank
        ctx.save_for_backward(x2, t, a_all, *b_list)
        ctx.members, ctx.dtype, ctx.x_shape = members, dtype, shape
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None):  # type: ignore[override]
        x2, t, a_all, *b_list = ctx.saved_tensors
        members, dtype = ctx.members, ctx.dtype
        count = len(members)
        need_x = ctx.needs_input_grad[0]
        grad_b: list[torch.Tensor | None] = [None] * count
        scaled: list[torch.Tensor] = []  # s_i * g_i @ B_i, side by side: [N, sum of ranks]
        grad_x = None
        start = 0
        for index, (member, b, grad) in enumerate(zip(members, b_list, grads, strict=True)):
            rank = b.shape[1]
            if grad is None:  # this member's output was not used
                scaled.append(x2.new_zeros(x2.shape[0], rank))
                start += rank
                continue
            g = to_dtype(grad.reshape(-1, grad.shape[-1]), dtype)
            scaled.append((g @ b).mul_(member.scaling))
            if ctx.needs_input_grad[2 + count + index]:
                grad_b[index] = to_dtype(
                    (g.t() @ t[:, start : start + rank]).mul_(member.scaling), member.lora_b.dtype
                )
            if need_x:
                weight = ctx.weights[index]
                if weight is None:
                    weight = base_weight(member.base, dtype, member.four_bit)
                grad_x = g @ weight if grad_x is None else grad_x.addmm_(g, weight)
            start += rank
        ctx.weights = None
        # Each A gradient as its own GEMM, as the members one by one compute it: stacked, the
        # GEMM's shape (and so its rounding) would differ.
        grad_a = [
            to_dtype(part.t() @ x2, m.lora_a.dtype) if ctx.needs_input_grad[2 + index] else None
            for index, (part, m) in enumerate(zip(scaled, members, strict=True))
        ]
        gb = torch.cat(scaled, dim=1)
        if need_x:
            grad_x = (gb @ a_all) if grad_x is None else grad_x.addmm_(gb, a_all)
            grad_x = grad_x.view(ctx.x_shape)
        return (grad_x, None, *grad_a, *grad_b)


class _Group:
    """One layer's projections on one input; ``pending`` holds the outputs computed for the
    members not yet called, with the input they belong to."""

    def __init__(self, modules: list[Any]) -> None:
        self.modules = modules
        self.pending: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None

    def resolved(self) -> tuple[ResolvedAdapter, ...] | None:
        members = []
        for module in self.modules:
            if module.__dict__.get(SKIP_BASE_ATTR, False):
                return None
            state = current_adapter(module)
            if state is None or (state.dropout is not None and state.dropout.training):
                return None
            members.append(state)
        return tuple(members)

    def call(self, index: int, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        module = self.modules[index]
        pending = self.pending
        if pending is not None and pending[0] is x and index in pending[1]:
            out = pending[1].pop(index)
            if not pending[1]:
                self.pending = None
            return out
        members = None if args or kwargs else self.resolved()
        if members is None:
            return fused_forward(module, x, *args, **kwargs)
        adapters = [m.lora_a for m in members] + [m.lora_b for m in members]
        outs = GroupedLoraFunction.apply(x, members, *adapters)
        rest = {i: out for i, out in enumerate(outs) if i != index}
        self.pending = (x, rest) if rest else None
        return outs[index]


class _Member:
    """A grouped projection's forward."""

    def __init__(self, group: _Group, index: int) -> None:
        self.group, self.index = group, index

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.group.call(self.index, x, *args, **kwargs)


def apply_grouped_lora(layers: list[Any]) -> dict[str, int]:
    """Group the fused LoRA projections of each decoder layer (of the model types in
    GROUPED_MODEL_TYPES). Returns how many layers got each group, e.g. {"q/k/v": 24}."""
    counts: dict[str, int] = {}
    for layer in layers:
        for parent_name, names in GROUPS:
            parent = getattr(layer, parent_name, None)
            modules = [getattr(parent, name, None) for name in names]
            if not all(m is not None and getattr(m, FUSED_ATTR, False) for m in modules):
                continue
            group = _Group(modules)
            for index, module in enumerate(modules):
                module.forward = _Member(group, index)
            label = "/".join(name.removesuffix("_proj") for name in names)
            counts[label] = counts.get(label, 0) + 1
    return counts

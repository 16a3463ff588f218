"""Gradient checkpointing per decoder layer, with the saved inputs offloaded to host memory.

Each decoder layer runs its forward without keeping activations; only its input is kept, and
with ``offload`` that input goes to pinned host memory on a side stream while the next layers
compute, and comes back (prefetched one layer ahead) during the backward. On the 8B shape at
8 x 2048 tokens that is 32 x 128 MiB of GPU memory freed for a host copy that overlaps compute.

The recompute skips work that plain checkpointing repeats for nothing. A decoder layer ends in
``residual + down_proj(act)``, and its backward never reads that sum, so the recompute runs
the layer with down_proj's base matmul left out (engine.fast_lora, ``skip_base``): with a
frozen base that is a third of the MLP's recompute. This holds for the layer classes listed in
SKIP_DOWN_FORWARD, whose forward ends exactly so; tests/engine/test_fast_path.py checks
loss and every gradient against the model without checkpointing, for each of them.

Random state (dropout) and autocast are restored for the recompute as torch.utils.checkpoint
does, so the recomputed layer is the same function as the first forward.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.fast_lora import _SKIP_BASE_ATTR, FUSED_ATTR, dense_or_4bit, skip_base_forward

# model_type -> decoder layers whose forward is `h = x + attn(norm(x)); out = h + mlp(norm(h))`
# with mlp ending in down_proj: the layer output is never needed by its own backward.
SKIP_DOWN_FORWARD = {"llama", "mistral", "qwen2", "qwen3"}

# Outputs of this Function always need a backward (the layer's adapters train) even when the
# layer's input does not require grad (frozen embeddings under LoRA).
_GRAD_ANCHOR = torch.empty(0, requires_grad=True)


@dataclass
class _Saved:
    """One layer input, on the GPU or in flight to/from pinned host memory."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    gpu: torch.Tensor | None = None
    host: torch.Tensor | None = None
    ready: Any = None  # CUDA event: the host copy (or the copy back) is done


@dataclass
class ActivationStore:
    """Holds the checkpointed layer inputs of the forward in flight, in layer order."""

    offload: bool
    _stream: Any = None
    _host: dict[int, torch.Tensor] = field(default_factory=dict)
    _order: list[tuple[int, _Saved]] = field(default_factory=list)

    def put(self, index: int, tensor: torch.Tensor) -> _Saved:
        if index == 0:
            self._order.clear()  # a new forward: anything left belongs to a pass with no backward
        saved = _Saved(tensor.shape, tensor.dtype, tensor.device)
        if not (self.offload and tensor.is_cuda):
            saved.gpu = tensor
        else:
            stream = self._copy_stream()
            host = self._host_buffer(index, tensor)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                host.copy_(tensor.reshape(-1), non_blocking=True)
                saved.ready = torch.cuda.Event()
                saved.ready.record(stream)
            tensor.record_stream(stream)  # its memory is not reused before the copy ends
            saved.host = host
        self._order.append((index, saved))
        return saved

    def take(self, saved: _Saved) -> torch.Tensor:
        """The tensor back on its device; starts bringing back the layer before it as well."""
        self._fetch(saved)
        position = next((i for i, (_, s) in enumerate(self._order) if s is saved), None)
        if position is not None:
            self._order.pop(position)
            if position > 0:
                self._fetch(self._order[position - 1][1])
        if saved.ready is not None:
            torch.cuda.current_stream().wait_event(saved.ready)
        tensor = saved.gpu
        saved.gpu = saved.host = saved.ready = None
        if tensor is None:  # each backward takes its own input once
            raise RuntimeError("a checkpointed layer input was taken twice")
        return tensor

    def _fetch(self, saved: _Saved) -> None:
        if saved.gpu is not None or saved.host is None:
            return
        stream = self._copy_stream()
        # The fresh block may have just been freed by work still queued on the compute stream.
        stream.wait_stream(torch.cuda.current_stream())
        gpu = torch.empty(saved.shape, dtype=saved.dtype, device=saved.device)
        with torch.cuda.stream(stream):
            gpu.view(-1).copy_(saved.host, non_blocking=True)
            saved.ready = torch.cuda.Event()
            saved.ready.record(stream)
        saved.gpu = gpu

    def _copy_stream(self) -> Any:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _host_buffer(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """A pinned buffer per layer, reused across steps (pinning memory is slow); the copies
        into and out of it run in order on one stream, so reuse never overtakes a copy."""
        buffer = self._host.get(index)
        numel = tensor.numel()
        if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=tensor.dtype, pin_memory=True)
            self._host[index] = buffer
        return buffer[:numel]


@dataclass
class _LayerCall:
    layer: Any
    forward: Any  # the layer's own forward
    index: int
    store: ActivationStore
    skip_down: bool
    random: bool  # the layer draws random numbers (dropout): the recompute must replay them
    args: tuple
    kwargs: dict


class _CheckpointedLayer(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, anchor: torch.Tensor, call: _LayerCall
    ) -> torch.Tensor:  # type: ignore[override]
        del anchor
        device_type = hidden.device.type
        ctx.call = call
        ctx.autocast = (
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
            torch.is_autocast_cache_enabled(),
        )
        ctx.rng = _rng_state(hidden.device) if call.random else None
        with torch.no_grad():
            out = call.forward(hidden, *call.args, **call.kwargs)
        ctx.saved = call.store.put(call.index, hidden.detach())
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        call: _LayerCall = ctx.call
        hidden = call.store.take(ctx.saved).detach().requires_grad_(ctx.needs_input_grad[0])
        enabled, dtype, cache = ctx.autocast
        device = hidden.device
        replay = (
            torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
            if ctx.rng is not None
            else contextlib.nullcontext()
        )
        with (
            replay,
            torch.enable_grad(),
            torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=cache),
        ):  # fmt: skip
            if ctx.rng is not None:
                _set_rng_state(device, ctx.rng)
            with _DownForwardSkipped(call.layer, call.skip_down):
                out = call.forward(hidden, *call.args, **call.kwargs)
        if out.requires_grad:  # False when nothing in this layer trains and its input is frozen
            torch.autograd.backward(out, grad_out)
        ctx.call = ctx.saved = None
        return (hidden.grad if ctx.needs_input_grad[0] else None), None, None


class _DownForwardSkipped:
    """For the recompute: down_proj contributes its backward but runs no base matmul."""

    def __init__(self, layer: Any, active: bool) -> None:
        self.down = layer.mlp.down_proj if active else None
        self.previous: Any = None

    def __enter__(self) -> None:
        down = self.down
        if down is None:
            return
        if getattr(down, FUSED_ATTR, False):
            setattr(down, _SKIP_BASE_ATTR, True)
        else:
            self.previous = down.__dict__.get("forward")
            down.forward = functools.partial(skip_base_forward, down)

    def __exit__(self, *exc: object) -> None:
        down = self.down
        if down is None:
            return
        if getattr(down, _SKIP_BASE_ATTR, False):
            setattr(down, _SKIP_BASE_ATTR, False)
        elif self.previous is not None:
            down.forward = self.previous
        else:
            del down.forward


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cpu = torch.get_rng_state()
    return cpu, torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _checkpointed_forward(
    layer: Any, original: Any, index: int, store: ActivationStore, skip_down: bool,
    random: bool, hidden: torch.Tensor, *args: Any, **kwargs: Any,
) -> torch.Tensor:  # fmt: skip
    if not (layer.training and torch.is_grad_enabled()):
        return original(hidden, *args, **kwargs)
    call = _LayerCall(layer, original, index, store, skip_down, random, args, kwargs)
    return _CheckpointedLayer.apply(hidden, _GRAD_ANCHOR, call)


def decoder_layers(model: Any) -> list[Any] | None:
    """The decoder's layer list of a (PEFT-wrapped) causal LM, or None when not found."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if callable(getattr(base, "get_decoder", None)) else None
    layers = getattr(decoder, "layers", None)
    return list(layers) if layers is not None and len(layers) else None


def down_skippable(model_type: str, layer: Any) -> bool:
    mlp = getattr(layer, "mlp", None)
    down = getattr(mlp, "down_proj", None)
    if model_type not in SKIP_DOWN_FORWARD or down is None:
        return False
    base = down.get_base_layer() if hasattr(down, "get_base_layer") else down
    frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
    supported = dense_or_4bit(base)
    if hasattr(down, "get_base_layer"):  # a LoRA module: the fused path must hold it
        supported = supported and getattr(down, FUSED_ATTR, False)
    return frozen and supported


def draws_random(layer: Any) -> bool:
    """Dropout anywhere in the layer (LoRA's, or attention's): saving and restoring the random
    state costs host time per layer, so layers without it skip that."""
    for module in layer.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            return True
        if float(getattr(module, "attention_dropout", 0.0) or 0.0) > 0:
            return True
    return False


def install(model: Any, *, offload: bool) -> list[str] | None:
    """Checkpoint every decoder layer this way. Returns what was applied, or None when the
    model's layers were not found (the caller then uses transformers' checkpointing)."""
    layers = decoder_layers(model)
    if layers is None:
        return None
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    store = ActivationStore(offload=offload)
    skipped_down = 0
    for index, layer in enumerate(layers):
        skip = down_skippable(model_type, layer)
        skipped_down += skip
        original = layer.forward
        layer.forward = functools.partial(
            _checkpointed_forward, layer, original, index, store, skip, draws_random(layer)
        )
    applied = ["checkpoint:per-layer"]
    if offload:
        applied.append("checkpoint:offload-to-host")
    if skipped_down:
        applied.append(f"checkpoint:no-down-proj-recompute({skipped_down}/{len(layers)})")
    return applied

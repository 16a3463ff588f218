"""Gradient checkpointing per decoder layer, with the saved inputs offloaded to host memory.

Each decoder layer runs its forward without keeping activations; only its input is kept, and
with ``offload`` that input goes to pinned host memory on a side stream while the next layers
compute, and comes back (prefetched one layer ahead) during the backward. On the 8B shape at
8 x 2048 tokens that is 32 x 128 MiB of GPU memory freed for a host copy that overlaps compute.

The recompute skips work that plain checkpointing repeats for nothing. A decoder layer ends in
``residual + down_proj(act)``, and its backward never reads that sum, so the recompute runs
the layer with down_proj's base matmul left out (engine.speed.fast_lora, ``skip_base``): with a
frozen base that is a third of the MLP's recompute. With offloading, each layer also keeps its
post-attention residual (the MLP norm's input) in host memory, and the recompute hands that
saved value to the MLP, so o_proj's base matmul (whose output only made that residual) is
skipped as well. This holds for the layer classes listed in
SKIP_DOWN_FORWARD, whose forward ends exactly so; tests/engine/speed/test_fast_path.py checks
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

from engine.plan.graph_work import HOST_BOUND_WORK, host_bound
from engine.speed.fast_lora import (
    FUSED_ATTR,
    SKIP_BASE_ATTR,
    dense_or_4bit,
    keeping_dequantized_weights,
    skip_base_forward,
)
from engine.speed.layer_graphs import LayerGraphs, layer_weights, tokens_of

# model_type -> decoder layers whose forward is `h = x + attn(norm(x)); out = h + mlp(norm(h))`
# with mlp ending in down_proj: the layer output is never needed by its own backward.
SKIP_DOWN_FORWARD = {"llama", "mistral", "qwen2", "qwen3"}

# Outputs of this Function always need a backward (the layer's adapters train) even when the
# layer's input does not require grad (frozen embeddings under LoRA).
_GRAD_ANCHOR = torch.empty(0, requires_grad=True)
_GRAPHS_ATTR = "_finetty_layer_graphs"
_COPIES_IN_FLIGHT = 2  # layers whose host copies may still be reading their GPU tensors


@dataclass
class _Saved:
    """One layer's saved tensors, on the GPU or in flight to/from pinned host memory."""

    shapes: list[torch.Size]
    dtypes: list[torch.dtype]
    device: torch.device
    gpu: list[torch.Tensor] | None = None
    host: list[torch.Tensor] | None = None
    ready: Any = None  # CUDA event: the host copies (or the copies back) are done
    copying: list[torch.Tensor] | None = None  # the GPU tensors the host copies still read


@dataclass
class ActivationStore:
    """Holds the checkpointed layers' saved tensors of the forward in flight, in layer order."""

    offload: bool
    _stream: Any = None
    _host: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    _order: list[tuple[int, _Saved]] = field(default_factory=list)

    def put(self, index: int, tensors: list[torch.Tensor]) -> _Saved:
        if index == 0:
            self._release(len(self._order))
            self._order.clear()  # a new forward: anything left belongs to a pass with no backward
        device = tensors[0].device
        saved = _Saved([t.shape for t in tensors], [t.dtype for t in tensors], device)
        if not (self.offload and device.type == "cuda"):
            saved.gpu = list(tensors)
        else:
            stream = self._copy_stream()
            hosts = [self._host_buffer((index, i), t) for i, t in enumerate(tensors)]
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for host, tensor in zip(hosts, tensors, strict=True):
                    host.copy_(tensor.reshape(-1), non_blocking=True)
                saved.ready = torch.cuda.Event()
                saved.ready.record(stream)
            saved.copying, saved.host = list(tensors), hosts
        self._order.append((index, saved))
        self._release(len(self._order) - _COPIES_IN_FLIGHT)
        return saved

    def _release(self, count: int) -> None:
        """Free the GPU tensors of the first ``count`` layers' finished host copies. The compute
        stream waits (on the GPU, not the host) for those copies, so its later work may reuse
        the memory. (record_stream would free it only once the host sees the copy done; with
        the host far ahead of the GPU, as under CUDA graphs, that held every layer's tensors.)
        The copies of layers two back are long done by the time the GPU gets here."""
        current = None
        for _, saved in self._order[: max(count, 0)]:
            if saved.copying is not None:
                current = current or torch.cuda.current_stream()
                current.wait_event(saved.ready)
                saved.copying = None

    def take(self, saved: _Saved) -> list[torch.Tensor]:
        """The tensors back on their device; starts bringing back the layer before as well."""
        self._release(len(self._order))
        self._fetch(saved)
        position = next((i for i, (_, s) in enumerate(self._order) if s is saved), None)
        if position is not None:
            self._order.pop(position)
            if position > 0:
                self._fetch(self._order[position - 1][1])
        if saved.ready is not None:
            torch.cuda.current_stream().wait_event(saved.ready)
        tensors = saved.gpu
        saved.gpu = saved.host = saved.ready = None
        if tensors is None:  # each backward takes its own tensors once
            raise RuntimeError("a checkpointed layer input was taken twice")
        return tensors

    def _fetch(self, saved: _Saved) -> None:
        if saved.gpu is not None or saved.host is None:
            return
        stream = self._copy_stream()
        # The fresh blocks may have just been freed by work still queued on the compute stream.
        stream.wait_stream(torch.cuda.current_stream())
        gpus = [
            torch.empty(shape, dtype=dtype, device=saved.device)
            for shape, dtype in zip(saved.shapes, saved.dtypes, strict=True)
        ]
        with torch.cuda.stream(stream):
            for gpu, host in zip(gpus, saved.host, strict=True):
                gpu.view(-1).copy_(host, non_blocking=True)
            saved.ready = torch.cuda.Event()
            saved.ready.record(stream)
        saved.gpu = gpus

    def _copy_stream(self) -> Any:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _host_buffer(self, key: tuple[int, int], tensor: torch.Tensor) -> torch.Tensor:
        """A pinned buffer per saved tensor, reused across steps (pinning memory is slow); the
        copies into and out of it run in order on one stream, so reuse never overtakes a copy."""
        buffer = self._host.get(key)
        numel = tensor.numel()
        if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=tensor.dtype, pin_memory=True)
            self._host[key] = buffer
        return buffer[:numel]


class _Middle:
    """The layer's residual stream after attention (``h = x + attn(norm(x))``), as the MLP's
    norm receives it. The first forward stashes it; the recompute hands the same value to the
    MLP, so o_proj's output (only ever read to make ``h``) need not be computed again."""

    def __init__(self, norm: Any) -> None:
        self.norm = norm
        self.original = norm.forward
        self.mode = "off"  # "stash" (first forward), "replay" (recompute) or "off"
        self.value: torch.Tensor | None = None
        norm.forward = self.forward

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.mode == "stash":
            self.value = hidden.detach()
        elif self.mode == "replay":
            hidden = SameGradient.apply(hidden, self.value)
        return self.original(hidden, *args, **kwargs)


class SameGradient(torch.autograd.Function):
    """The saved value in place of the recomputed one (whose o_proj term was left out), with
    the recomputed one's gradient: h = x + o, so dh flows to x and to o_proj as before."""

    @staticmethod
    def forward(ctx: Any, recomputed: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        del ctx, recomputed
        return saved.view_as(saved)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


@dataclass(frozen=True, kw_only=True)
class _LayerSetup:
    """What install() decided for one decoder layer: built once, read by each of its calls."""

    layer: Any
    forward: Any  # the layer's own forward
    index: int
    store: ActivationStore
    skip_down: bool
    middle: _Middle | None  # set: the MLP's input is saved and o_proj's recompute skipped
    random: bool  # the layer draws random numbers (dropout): the recompute must replay them
    graphs: LayerGraphs | None  # CUDA graphs of this model's layers, when on
    # 4-bit projections reuse their recompute's weights in the backward: True, False, or None
    # where the layer call is host-bound (engine.plan.graph_work), judged by layer_weights
    keep_dequantized: bool | None
    layer_weights: int


class _CheckpointedLayer(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        anchor: torch.Tensor,
        setup: _LayerSetup,
        args: tuple,
        kwargs: dict,
    ) -> torch.Tensor:
        del anchor
        device_type = hidden.device.type
        ctx.setup, ctx.args, ctx.kwargs = setup, args, kwargs
        ctx.autocast = (
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
            torch.is_autocast_cache_enabled(),
        )
        ctx.rng = _rng_state(hidden.device) if setup.random else None
        graphed = None
        if setup.graphs is not None:
            graphed = setup.graphs.forward(
                setup.index,
                hidden,
                args,
                kwargs,
                run=functools.partial(_first_forward, setup),
                stashes_middle=setup.middle is not None,
                random=setup.random,
            )
        if graphed is not None:
            ctx.graph_key, out, middle = graphed
        else:
            ctx.graph_key = None
            with torch.no_grad():
                out, middle = _first_forward(setup, hidden, args, kwargs)
        saved = [hidden.detach()] if middle is None else [hidden.detach(), middle]
        ctx.saved = setup.store.put(setup.index, saved)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        setup: _LayerSetup = ctx.setup
        args, kwargs = ctx.args, ctx.kwargs
        saved = setup.store.take(ctx.saved)
        middle = saved[1] if setup.middle is not None else None
        need_input_grad = ctx.needs_input_grad[0]
        ctx.setup = ctx.args = ctx.kwargs = ctx.saved = None
        if ctx.graph_key is not None and setup.graphs is not None:
            graphed, grad = setup.graphs.backward(
                setup.index,
                ctx.graph_key,
                saved[0],
                args,
                kwargs,
                middle=middle,
                grad_out=grad_out,
                params=functools.partial(_trained_parameters, setup.layer),
                need_input_grad=need_input_grad,
                recompute=functools.partial(
                    _recompute, setup, autocast=ctx.autocast, cache_enabled=False
                ),
                rng=ctx.rng[1] if ctx.rng is not None else None,
            )
            if graphed:
                return grad, None, None, None, None
        hidden = saved[0].detach().requires_grad_(need_input_grad)
        device = hidden.device
        replay = (
            torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
            if ctx.rng is not None
            else contextlib.nullcontext()
        )
        with replay:
            if ctx.rng is not None:
                _set_rng_state(device, ctx.rng)
            out = _recompute(
                setup,
                hidden,
                middle,
                args,
                kwargs,
                autocast=ctx.autocast,
                cache_enabled=ctx.autocast[2],
            )
        if out.requires_grad:  # False when nothing in this layer trains and its input is frozen
            torch.autograd.backward(out, grad_out)
        return (hidden.grad if need_input_grad else None), None, None, None, None


def _first_forward(
    setup: _LayerSetup, hidden: torch.Tensor, args: tuple, kwargs: dict
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's forward (the caller turns grad off), and its stashed post-attention
    residual when the recompute is to skip o_proj."""
    middle = setup.middle
    if middle is None:
        return setup.forward(hidden, *args, **kwargs), None
    middle.mode = "stash"
    try:
        out = setup.forward(hidden, *args, **kwargs)
    finally:
        middle.mode = "off"
    value, middle.value = middle.value, None
    if value is None:
        raise RuntimeError("the layer's MLP norm was not called in its forward")
    return out, value


def _recompute(
    setup: _LayerSetup,
    hidden: torch.Tensor,
    middle_value: torch.Tensor | None,
    args: tuple,
    kwargs: dict,
    *,
    autocast: tuple[bool, torch.dtype, bool],
    cache_enabled: bool,
) -> torch.Tensor:
    """The layer again, with grad and the first forward's autocast state, without the base
    matmuls whose outputs its backward never reads."""
    keep = keeps_dequantized_weights(
        setup.keep_dequantized, hidden, layer_weights=setup.layer_weights
    )
    device_type = hidden.device.type
    middle = setup.middle
    if middle is not None:
        middle.mode, middle.value = "replay", middle_value
    enabled, dtype, _ = autocast
    skipped = [setup.layer.mlp.down_proj] if setup.skip_down else []
    if middle is not None:
        skipped.append(setup.layer.self_attn.o_proj)
    try:
        with (
            torch.enable_grad(),
            torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled),
            _ForwardsSkipped(skipped),
            keeping_dequantized_weights() if keep else contextlib.nullcontext(),
        ):
            return setup.forward(hidden, *args, **kwargs)
    finally:
        if middle is not None:
            middle.mode, middle.value = "off", None


def keeps_dequantized_weights(
    asked: bool | None, hidden: torch.Tensor, *, layer_weights: int
) -> bool:
    """Whether a 4-bit layer's recompute keeps its dequantized weights for the backward:
    ``asked`` when set, else where the layer call on ``hidden`` is host-bound. Keeping saves a
    second dequantization in the backward, for one layer's weights in memory: worth it where
    the host sets the pace (+3.2% at 8B QLoRA, 1 x 2048 tokens), not where the GPU does (the
    same speed at 8 x 2048, 0.26 GiB less without; bench/RESULTS.md, devV)."""
    if asked is not None:
        return asked
    return host_bound(tokens_of(hidden), layer_weights)


def _trained_parameters(layer: Any) -> list[torch.nn.Parameter]:
    return [p for p in layer.parameters() if p.requires_grad]


class _ForwardsSkipped:
    """For the recompute: these projections contribute their backward but run no base matmul
    (their outputs are never read there)."""

    def __init__(self, modules: list[Any]) -> None:
        self.modules = modules
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        for module in self.modules:
            if getattr(module, FUSED_ATTR, False):
                setattr(module, SKIP_BASE_ATTR, True)
            else:
                self.previous[id(module)] = module.__dict__.get("forward")
                module.forward = functools.partial(skip_base_forward, module)

    def __exit__(self, *exc: object) -> None:
        for module in self.modules:
            if getattr(module, SKIP_BASE_ATTR, False):
                setattr(module, SKIP_BASE_ATTR, False)
            elif self.previous.get(id(module)) is not None:
                module.forward = self.previous[id(module)]
            else:
                del module.forward
        self.previous.clear()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cpu = torch.get_rng_state()
    return cpu, torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _checkpointed_forward(
    setup: _LayerSetup, hidden: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    if not (setup.layer.training and torch.is_grad_enabled()):
        return setup.forward(hidden, *args, **kwargs)
    return _CheckpointedLayer.apply(hidden, _GRAD_ANCHOR, setup, args, kwargs)


def decoder_layers(model: Any) -> list[Any] | None:
    """The decoder's layer list of a (PEFT-wrapped) causal LM, or None when not found."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if callable(getattr(base, "get_decoder", None)) else None
    layers = getattr(decoder, "layers", None)
    return list(layers) if layers is not None and len(layers) else None


def down_skippable(model_type: str, layer: Any) -> bool:
    mlp = getattr(layer, "mlp", None)
    down = getattr(mlp, "down_proj", None)
    return model_type in SKIP_DOWN_FORWARD and _frozen_and_fusable(down)


def o_skippable(model_type: str, layer: Any) -> bool:
    """o_proj's output only makes the MLP's input, ``x + o``, which the MLP norm receives."""
    attention = getattr(layer, "self_attn", None)
    norm = getattr(layer, "post_attention_layernorm", None)
    return (
        down_skippable(model_type, layer)
        and isinstance(norm, torch.nn.Module)
        and _frozen_and_fusable(getattr(attention, "o_proj", None))
    )


def _frozen_and_fusable(projection: Any) -> bool:
    if projection is None:
        return False
    base = projection.get_base_layer() if hasattr(projection, "get_base_layer") else projection
    frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
    supported = dense_or_4bit(base)
    if hasattr(projection, "get_base_layer"):  # a LoRA module: the fused path must hold it
        supported = supported and getattr(projection, FUSED_ATTR, False)
    return frozen and supported


def dropout_only(layer: Any) -> bool:
    """The layer's random numbers come from nn.Dropout modules alone (LoRA's dropout), not
    from attention's own dropout inside a fused kernel."""
    return not any(_attention_dropout(module) for module in layer.modules())


def draws_random(layer: Any) -> bool:
    """Dropout anywhere in the layer (LoRA's, or attention's): saving and restoring the random
    state costs host time per layer, so layers without it skip that."""
    return any(
        (isinstance(module, torch.nn.Dropout) and module.p > 0) or _attention_dropout(module)
        for module in layer.modules()
    )


def _attention_dropout(module: Any) -> bool:
    return float(getattr(module, "attention_dropout", 0.0) or 0.0) > 0


def install(
    model: Any,
    *,
    offload: bool,
    save_middle: bool | None = None,
    cuda_graphs: bool | None = False,
    graph_dropout: bool = True,
    keep_dequantized: bool | None = None,
) -> list[str] | None:
    """Checkpoint every decoder layer this way. Returns what was applied, or None when the
    model's layers were not found (the caller then uses transformers' checkpointing).

    ``save_middle`` (default: with ``offload``) also keeps each layer's post-attention residual,
    so the recompute skips o_proj: a second tensor per layer, which only host memory has room
    for. ``cuda_graphs``: replay each layer's forward and backward as CUDA graphs
    (engine.speed.layer_graphs; one process only): True always, None (auto) where a layer call is
    small enough to be host-bound, False never; ``graphs_of(model)`` then says what happened.
    ``graph_dropout``: layers with LoRA dropout are graphed too, their masks drawn again from
    the forward's generator state in the recompute (bitwise equal to eager on an H200, devS).
    ``keep_dequantized``: a 4-bit layer's recompute keeps the weights it dequantized for its
    own backward (one layer's weights at a time) instead of dequantizing them again: True
    always, None (auto) where a layer call is host-bound, False never."""
    layers = decoder_layers(model)
    if layers is None:
        return None
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    store = ActivationStore(offload=offload)
    save_middle = offload if save_middle is None else save_middle
    skipped_down = skipped_o = 0
    graphs = (
        None
        if cuda_graphs is False
        else LayerGraphs(max_work=None if cuda_graphs else HOST_BOUND_WORK)
    )
    setattr(model, _GRAPHS_ATTR, graphs)
    for index, layer in enumerate(layers):
        skip = down_skippable(model_type, layer)
        middle = (
            _Middle(layer.post_attention_layernorm)
            if save_middle and o_skippable(model_type, layer)
            else None
        )
        skipped_down += skip
        skipped_o += middle is not None
        random = draws_random(layer)
        weights = layer_weights(layer)
        if graphs is not None:
            graphs.weights[index] = weights
            if random and graph_dropout and dropout_only(layer):
                graphs.random_ok.add(index)
        setup = _LayerSetup(
            layer=layer,
            forward=layer.forward,
            index=index,
            store=store,
            skip_down=skip,
            middle=middle,
            random=random,
            graphs=graphs,
            keep_dequantized=keep_dequantized,
            layer_weights=weights,
        )
        layer.forward = functools.partial(_checkpointed_forward, setup)
    applied = ["checkpoint:per-layer"]
    if graphs is not None:
        applied.append("checkpoint:cuda-graphs" + ("" if cuda_graphs else "(auto)"))
    if offload:
        applied.append("checkpoint:offload-to-host")
    if skipped_down:
        applied.append(f"checkpoint:no-down-proj-recompute({skipped_down}/{len(layers)})")
    if skipped_o:
        applied.append(f"checkpoint:no-o-proj-recompute({skipped_o}/{len(layers)})")
    return applied


def graphs_of(model: Any) -> LayerGraphs | None:
    """The CUDA graphs install() set up for ``model`` (how many were captured, or why they
    were switched off), or None."""
    return getattr(model, _GRAPHS_ATTR, None)

"""CUDA graphs of the checkpointed decoder layers: each layer's forward, and its recompute with
its backward, replayed as one graph each instead of a hundred kernel launches from Python.

On a small model the GPU waits for the host: at 0.5B parameters and 8 x 2048 tokens a step held
148 ms of GPU work that Python and kernel launches stretched to 0.25-0.32 s (bench/RESULTS.md,
devM). A replayed graph launches all of a layer's kernels at once.

How it stays the same function:

- A layer's call is graphed once the same signature (tensor shapes and dtypes, constant
  arguments) has run eagerly ``warmup`` times in a row (cuBLAS, Triton and attention plans are
  made then, outside any capture). Calls of any other signature, and layers that draw random
  numbers other than LoRA's dropout (attention dropout), run eagerly as before. A layer with
  LoRA dropout (``random_ok``, engine.speed.layer_checkpoint's ``graph_dropout``) is graphed too: the
  forward graph draws from the generator's state at its call, as the eager forward does, and
  the recompute's graph is replayed at that same state, so it draws the same masks. Packed
  varlen batches change signature nearly every step, so they stay eager too.
- The forward graph runs under no_grad as the eager checkpointed forward does; the backward
  graph recomputes the layer and takes ``torch.autograd.grad`` of its input and trained
  parameters, which are then added to ``.grad`` as autograd's accumulation would.
- Inputs are copied into static tensors shared by every layer's graphs of one signature, and
  outputs copied out of them, so that only one layer's worth of them exists. The graphs replay
  in the order they were captured (forward 0..N-1, backward N-1..0), so they share one memory
  pool, as torch.cuda.make_graphed_callables arranges it.
- Parameters must change in place (the optimizer's step, load_state_dict), which is how the
  trainer updates them: the graphs read them at fixed addresses.

By default (``max_work``) only layer calls small enough for the host to be the bottleneck are
graphed: on a large model at a large batch the GPU is busy anyway, and the copies cost more
than the launches they save (HOST_BOUND_WORK).

Not for several processes: DDP's gradient hooks fire on autograd's own accumulation, which the
graphed backward replaces. A capture that fails (an op that cannot be captured) switches graphs
off for the rest of the run, with ``failure`` saying why, and the layers run eagerly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.plan.graph_work import HOST_BOUND_WORK

_CONSTANTS = (type(None), bool, int, float, str)

Forward = Callable[[torch.Tensor, tuple, dict], tuple[torch.Tensor, torch.Tensor | None]]
Recompute = Callable[[torch.Tensor, "torch.Tensor | None", tuple, dict], torch.Tensor]


def signature(hidden: torch.Tensor, args: tuple, kwargs: dict) -> tuple[tuple, list] | None:
    """What a layer call's graph depends on (shapes, dtypes, constants, the argument structure)
    and its tensors in order; None when an argument cannot be part of a graph (an object such
    as a cache, or a tensor on another device)."""
    parts: list[Any] = []
    tensors: list[torch.Tensor] = []
    if not _walk(hidden, hidden.device, parts, tensors) or not _walk(
        args, hidden.device, parts, tensors
    ):
        return None
    for name in sorted(kwargs):
        parts.append(name)
        if not _walk(kwargs[name], hidden.device, parts, tensors):
            return None
    return tuple(parts), tensors


def _walk(value: Any, device: torch.device, parts: list, tensors: list) -> bool:
    # A module-level function, not a closure: a recursive closure is a reference cycle, which
    # kept every layer input it saw alive until the garbage collector ran.
    if isinstance(value, torch.Tensor):
        if value.device != device:
            return False
        parts.append((tuple(value.shape), value.dtype))
        tensors.append(value)
        return True
    if isinstance(value, _CONSTANTS):
        parts.append((type(value), value))
        return True
    if isinstance(value, (tuple, list)):
        parts.append((type(value), len(value)))
        return all(_walk(item, device, parts, tensors) for item in value)
    return False


def substitute(value: Any, tensors: Iterator[torch.Tensor]) -> Any:
    """``value`` with each tensor replaced, in signature() order, by the next of ``tensors``."""
    if isinstance(value, torch.Tensor):
        return next(tensors)
    if isinstance(value, (tuple, list)):
        return type(value)(substitute(item, tensors) for item in value)
    if isinstance(value, dict):
        return {name: substitute(value[name], tensors) for name in sorted(value)}
    return value


@dataclass
class _Slots:
    """Static tensors of one signature, shared by every layer's graphs: the copies in and out
    of a graph happen just before and after its replay, on the one stream they all run on."""

    inputs: list[torch.Tensor]  # the layer input, then the other tensor arguments
    out: torch.Tensor  # forward: the layer output; backward: that output's gradient
    middle: torch.Tensor | None  # the post-attention residual: stashed, then handed back
    grad_hidden: torch.Tensor  # backward: the layer input's gradient
    sources: list[tuple[torch.Tensor, int] | None] = field(default_factory=list)

    def load(self, tensors: list[torch.Tensor]) -> None:
        """Copy the call's tensors in; an argument shared by all layers (the rotary tables) is
        copied once, while the same tensor, unchanged, was the last copied into its slot."""
        self.inputs[0].copy_(tensors[0])
        for index, tensor in enumerate(tensors[1:], start=1):
            last = self.sources[index]
            if last is not None and last[0] is tensor and last[1] == tensor._version:
                continue
            self.inputs[index].copy_(tensor)
            self.sources[index] = (tensor, tensor._version)  # held: its address stays its own

    def load_backward(
        self, tensors: list[torch.Tensor], middle: torch.Tensor | None, grad_out: torch.Tensor
    ) -> None:
        """The backward graph's inputs: the saved layer input and middle, the output's gradient."""
        self.load(tensors)
        if middle is not None and self.middle is not None:
            self.middle.copy_(middle)
        self.out.copy_(grad_out)


@dataclass
class _Backward:
    graph: Any  # torch.cuda.CUDAGraph
    params: list[torch.nn.Parameter]
    grads: list[torch.Tensor | None]  # static outputs, in the graph's pool


@dataclass
class LayerGraphs:
    """The graphs of one model's checkpointed layers (engine.speed.layer_checkpoint calls in)."""

    warmup: int = 2
    max_signatures: int = 2  # a third shape (say, a halved micro-batch after that) runs eagerly
    max_work: float | None = HOST_BOUND_WORK  # None: graph every layer call, however large
    weights: dict[int, int] = field(default_factory=dict)  # layer index -> its linear weights
    random_ok: set[int] = field(default_factory=set)  # layers graphed despite their dropout
    failure: str | None = None
    captured: int = 0
    too_large: int = 0  # layer calls left eager because their work passed max_work
    _pool: Any = None
    _slots: dict[tuple, _Slots] = field(default_factory=dict)
    _forward: dict[tuple[int, tuple], Any] = field(default_factory=dict)
    _backward: dict[tuple[int, tuple, bool], _Backward] = field(default_factory=dict)
    _streak: dict[int, tuple[tuple, int]] = field(default_factory=dict)

    def forward(
        self,
        index: int,
        hidden: torch.Tensor,
        args: tuple,
        kwargs: dict,
        *,
        run: Forward,
        stashes_middle: bool,
        random: bool = False,
    ) -> tuple[tuple, torch.Tensor, torch.Tensor | None] | None:
        """The layer's output (and stashed middle) from its forward graph, with the signature
        for the backward; None: run it eagerly. ``random``: the layer draws random numbers
        (dropout), which only layers in ``random_ok`` may do here; the graph then draws them
        from the CUDA generator's state at this call, as the eager forward would."""
        if random and index not in self.random_ok:
            return None
        if self.failure is not None or hidden.device.type != "cuda":
            return None
        found = signature(hidden, args, kwargs)
        if found is None:
            return None
        key, tensors = found
        graph = self._forward.get((index, key))
        if graph is None:
            if not self.worth_it(index, hidden) or not self._due(index, key):
                return None
            graph = self._capture_forward(
                index,
                key,
                tensors,
                args,
                kwargs,
                run=run,
                stashes_middle=stashes_middle,
                rng=torch.cuda.get_rng_state(hidden.device) if random else None,
            )
            if graph is None:
                return None
        slots = self._slots[key]
        slots.load(tensors)
        graph.replay()
        middle = slots.middle.clone() if stashes_middle and slots.middle is not None else None
        return key, slots.out.clone(), middle

    def backward(
        self,
        index: int,
        key: tuple,
        hidden: torch.Tensor,
        args: tuple,
        kwargs: dict,
        *,
        middle: torch.Tensor | None,
        grad_out: torch.Tensor,
        params: Callable[[], list[torch.nn.Parameter]],
        need_input_grad: bool,
        recompute: Recompute,
        rng: torch.Tensor | None = None,
    ) -> tuple[bool, torch.Tensor | None]:
        """(graphed, the input's gradient): the parameters' gradients are added to ``.grad``.
        graphed False: nothing was done, run it eagerly. ``rng``: the CUDA generator's state at
        the forward, set for the recompute (and put back after) so that it draws the same
        dropout masks."""
        if self.failure is not None:
            return False, None
        found = signature(hidden, args, kwargs)
        if found is None or found[0] != key:
            return False, None
        tensors = found[1]
        entry = self._backward.get((index, key, need_input_grad))
        slots = self._slots.get(key)
        if slots is None:  # released since this call's forward
            return False, None
        if entry is None:
            trained = params()
            if not trained and not need_input_grad:  # nothing to differentiate
                return False, None
            entry = self._capture_backward(
                index,
                key,
                slots,
                tensors,
                args,
                kwargs,
                middle=middle,
                grad_out=grad_out,
                params=trained,
                need_input_grad=need_input_grad,
                recompute=recompute,
                rng=rng,
            )
            if entry is None:
                return False, None
        slots.load_backward(tensors, middle, grad_out)
        with _rng_at(rng, hidden.device):
            entry.graph.replay()
        _accumulate(entry.params, entry.grads)
        return True, (slots.grad_hidden.clone() if need_input_grad else None)

    def release(self) -> None:
        """Drop every graph, its pool and the static tensors (after running out of memory: the
        retry at a smaller micro-batch should not pay for graphs of the old shape)."""
        self._forward.clear()
        self._backward.clear()
        self._slots.clear()
        self._streak.clear()
        self._pool = None

    def worth_it(self, index: int, hidden: torch.Tensor) -> bool:
        """Whether this call's work (tokens x the layer's weights) is small enough for graphs
        to pay (see HOST_BOUND_WORK)."""
        if self.max_work is None:
            return True
        if tokens_of(hidden) * self.weights.get(index, 0) <= self.max_work:
            return True
        self.too_large += 1
        return False

    def _due(self, index: int, key: tuple) -> bool:
        previous, count = self._streak.get(index, (None, 0))
        count = count + 1 if previous == key else 1
        self._streak[index] = (key, count)
        if count <= self.warmup:
            return False
        return key in self._slots or len(self._slots) < self.max_signatures

    def _capture_forward(
        self,
        index: int,
        key: tuple,
        tensors: list[torch.Tensor],
        args: tuple,
        kwargs: dict,
        *,
        run: Forward,
        stashes_middle: bool,
        rng: torch.Tensor | None,
    ) -> Any:
        """``rng`` (a layer with dropout): the warm-up and the capture leave the generator at
        this state, so that the replay after them draws what the eager forward would."""
        slots = self._slots.get(key)
        hidden = tensors[0]
        if slots is None:
            slots = _Slots(
                inputs=[torch.empty_like(t) for t in tensors],
                out=torch.empty_like(hidden),
                middle=torch.empty_like(hidden) if stashes_middle else None,
                grad_hidden=torch.empty_like(hidden),
                sources=[None] * len(tensors),
            )
            self._slots[key] = slots
        elif stashes_middle and slots.middle is None:
            slots.middle = torch.empty_like(hidden)
        slots.load(tensors)
        static_args, static_kwargs = _static_call(slots, args, kwargs)

        def body() -> None:
            with torch.no_grad(), _autocast_without_cache(hidden.device.type):
                out, middle = run(slots.inputs[0], static_args, static_kwargs)
                slots.out.copy_(out)
                if stashes_middle and middle is not None and slots.middle is not None:
                    slots.middle.copy_(middle)

        graph = self._capture(body, f"layer {index} forward", rng, hidden.device)
        if graph is not None:
            self._forward[(index, key)] = graph
        return graph

    def _capture_backward(
        self,
        index: int,
        key: tuple,
        slots: _Slots,
        tensors: list[torch.Tensor],
        args: tuple,
        kwargs: dict,
        *,
        middle: torch.Tensor | None,
        grad_out: torch.Tensor,
        params: list[torch.nn.Parameter],
        need_input_grad: bool,
        recompute: Recompute,
        rng: torch.Tensor | None,
    ) -> _Backward | None:
        """``recompute`` sets the forward's autocast state itself (this runs in autograd's
        backward, where the caller's is not in force), with its cache off."""
        slots.load_backward(tensors, middle, grad_out)
        static_args, static_kwargs = _static_call(slots, args, kwargs)
        static_middle = slots.middle if middle is not None else None
        grads: list[torch.Tensor | None] = []

        def body() -> None:
            x = slots.inputs[0].detach().requires_grad_(need_input_grad)
            out = recompute(x, static_middle, static_args, static_kwargs)
            wrt = ([x] if need_input_grad else []) + params
            found = torch.autograd.grad(out, wrt, slots.out, allow_unused=True)
            if need_input_grad:
                slots.grad_hidden.copy_(found[0])
                found = found[1:]
            grads[:] = list(found)

        graph = self._capture(body, f"layer {index} backward", rng, slots.out.device)
        if graph is None:
            return None
        entry = _Backward(graph, params, grads)
        self._backward[(index, key, need_input_grad)] = entry
        return entry

    def _capture(
        self, body: Callable[[], None], what: str, rng: torch.Tensor | None, device: torch.device
    ) -> Any:
        """Warm ``body`` up on the capture stream, then capture it; None (and graphs off for
        the run) when it cannot be captured. Both run at the generator state ``rng`` (when
        given) and leave the generator as they found it."""
        current = torch.cuda.current_stream()
        graph = torch.cuda.CUDAGraph()
        try:
            stream = _capture_stream()
            stream.wait_stream(current)
            with torch.cuda.stream(stream), _rng_at(rng, device):
                body()
            current.wait_stream(stream)
            with (
                _rng_at(rng, device),
                torch.cuda.graph(
                    graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"
                ),
            ):
                body()
        except Exception as exc:  # noqa: BLE001 - any capture error means: run eagerly
            torch.cuda.synchronize()
            self.failure = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            self.release()
            return None
        if self._pool is None:
            self._pool = graph.pool()
        self.captured += 1
        return graph


_STREAM: list[Any] = []


def _capture_stream() -> Any:
    """One side stream for every capture (graphs sharing a pool should share their stream)."""
    if not _STREAM:
        _STREAM.append(torch.cuda.Stream())
    return _STREAM[0]


@contextlib.contextmanager
def _rng_at(state: torch.Tensor | None, device: torch.device) -> Iterator[None]:
    """The CUDA generator at ``state`` inside, and back where it was after (None: untouched).
    A graph's random ops read the generator's seed and offset when it is replayed."""
    if state is None:
        yield
        return
    previous = torch.cuda.get_rng_state(device)
    torch.cuda.set_rng_state(state, device)
    try:
        yield
    finally:
        torch.cuda.set_rng_state(previous, device)


def _static_call(slots: _Slots, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    statics = iter(slots.inputs[1:])
    return substitute(args, statics), substitute(kwargs, statics)


def _autocast_without_cache(device_type: str) -> torch.autocast:
    """The caller's autocast state with its weight-cast cache off: a cache filled inside a
    capture would hold tensors of the graph's pool (torch.cuda.make_graphed_callables asks the
    same)."""
    return torch.autocast(
        device_type,
        dtype=torch.get_autocast_dtype(device_type),
        enabled=torch.is_autocast_enabled(device_type),
        cache_enabled=False,
    )


def _accumulate(params: list[torch.nn.Parameter], grads: list[torch.Tensor | None]) -> None:
    """Add a graph's parameter gradients to ``.grad`` as autograd would: the first gradient is
    a new tensor (copied out of the graph's static output), later ones are added to it."""
    fresh = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None and p.grad is None]
    held = [
        (p, g) for p, g in zip(params, grads, strict=True) if g is not None and p.grad is not None
    ]
    if held:
        torch._foreach_add_([p.grad for p, _ in held], [g for _, g in held])
    if fresh:
        copies = torch._foreach_mul([g for _, g in fresh], 1.0)
        for (param, _), copy in zip(fresh, copies, strict=True):
            param.grad = copy


def tokens_of(hidden: torch.Tensor) -> int:
    """The tokens of a layer call: its hidden states' positions over batch and sequence."""
    return hidden.numel() // max(hidden.shape[-1], 1)


def layer_weights(layer: torch.nn.Module) -> int:
    """The weights a layer's matmuls read per token: the linear layers' in x out (a 4-bit
    base's too, which stores half as many elements)."""
    return sum(
        m.in_features * m.out_features for m in layer.modules() if isinstance(m, torch.nn.Linear)
    )

"""torch.compile of each decoder layer, for steps that the host, not the GPU, holds back.

A small model's step on a large GPU waits on Python and kernel launches: about 5,100 launches
and the layer code's Python, against 148 ms of GPU work in a 307 ms step at 0.5B
(bench/RESULTS.md, devM). Compiling the decoder layer turns its norms, RoPE, SwiGLU, residual
adds and the fused LoRA functions' glue into a few generated kernels behind one call, forward
and backward.

One compiled function serves every layer of the model (the layers share their code; their
weights are the graph's inputs), in a few variants: the checkpointed first forward (no grad),
the recompute (grad), and the first layer, whose input (frozen embeddings) needs no grad. Only
training calls take it: evaluation and generation (KV caches, changing shapes) run the layer's
own forward, so nothing compiles there.

It computes the same function; tests/engine/test_compile_layers.py checks the loss and every
gradient against the eager layers, with and without engine.layer_checkpoint.

Not compiled, with the reason logged: 4-bit and 8-bit bases (bitsandbytes weights are tensor
subclasses, not tested under the compiler), layers with dropout under gradient checkpointing
(the recompute must replay the first forward's random numbers exactly, which is not tested for
compiled code), and runs of several processes (not tested).
"""

from __future__ import annotations

import functools
from typing import Any

# Train and recompute, first layer and the rest, static and then dynamic shapes: 8 variants,
# torch's default limit; evaluation's are never compiled. Room for a second run in-process.
RECOMPILE_LIMIT = 32


def compile_reason(
    model: Any,
    *,
    quant_bits: int | None,
    lora_dropout: float,
    gradient_checkpointing: bool,
    processes: int,
) -> str | None:
    """Why the decoder layers of ``model`` (loaded, before its adapters) cannot be compiled;
    None when they can."""
    from engine.layer_checkpoint import decoder_layers, draws_random

    if quant_bits is not None:
        return f"{quant_bits}-bit base weights"
    if processes > 1:
        return "several processes"
    layers = decoder_layers(model)
    if layers is None:
        return "the model's decoder layers were not found"
    if gradient_checkpointing and (lora_dropout > 0 or any(draws_random(x) for x in layers)):
        return "dropout in the layers under gradient checkpointing"
    return None


def decide(
    requested: bool | None, reason: str | None, *, device: str, liger_requested: bool | None
) -> tuple[bool, str | None]:
    """Whether to compile, and (when not) why, for a run's training.torch_compile setting.
    Unset means on with a CUDA GPU: on the CPU the compile takes longer than it saves on the
    short runs made there. Explicit true with a reason against it raises a ConfigError."""
    if requested is False:
        return False, "training.torch_compile: false"
    if reason is not None:
        if requested:
            from engine.errors import ConfigError

            raise ConfigError(
                f"training.torch_compile: true, but the layers cannot be compiled: {reason}.",
                hint="set training.torch_compile: false, or leave it unset to decide by itself.",
            )
        return False, reason
    if requested:
        return True, None
    if device != "cuda":
        return False, "no CUDA GPU"
    if liger_requested:
        return False, "training.use_liger_kernel: true"
    return True, None


def _training_forward(layer: Any, compiled: Any, original: Any, *args: Any, **kwargs: Any) -> Any:
    if layer.training:
        return compiled(*args, **kwargs)
    return original(*args, **kwargs)


def compile_decoder_layers(model: Any) -> list[str]:
    """Replace each decoder layer's forward with a compiled one for training calls. Run it
    before engine.layer_checkpoint.install, which then checkpoints the compiled forward.
    Returns what was applied."""
    import torch
    import torch._dynamo

    from engine.layer_checkpoint import decoder_layers

    layers = decoder_layers(model) or []
    torch._dynamo.reset()  # a previous run's compiled variants would count against the limit
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
    for layer in layers:
        original = layer.forward
        compiled = torch.compile(original)
        layer.forward = functools.partial(_training_forward, layer, compiled, original)
    return [f"torch.compile(decoder layers {len(layers)}/{len(layers)})"] if layers else []

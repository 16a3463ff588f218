"""The exact speed-ups of finetty's training path, applied to a model prepared for training.

- fused LoRA projections (engine.speed.fast_lora); on request, those that read one input (q/k/v,
  gate/up) as one function each (engine.speed.grouped_lora);
- gradient checkpointing per decoder layer, without down_proj's recompute and, on a GPU, with
  the saved layer inputs in host memory, and beside them each layer's post-attention residual
  so that o_proj is not recomputed either (engine.speed.layer_checkpoint).

Each computes the same function as the plain path; what was applied is named in the
run_started event beside the Liger kernels. FSDP runs keep transformers' checkpointing: its
recompute must run inside the module call that gathers the shards.
"""

from __future__ import annotations

from typing import Any

from engine.config.derived import graphs_wanted, offload_activations


def apply_fast_path(
    model: Any,
    *,
    device: str,
    uses_adapter: bool,
    gradient_checkpointing: bool,
    fused_lora: bool = True,
    activation_offloading: bool | None = None,
    sharded: bool = False,
    save_layer_middle: bool | None = None,
    grouped_lora: bool = True,
    cuda_graphs: bool | None = False,
    graph_dropout: bool = True,
    keep_dequantized: bool | None = None,
) -> list[str]:
    """Patch ``model`` in place (after engine.models.adapters.prepare_for_training with
    gradient_checkpointing=False); returns the names of what was applied.

    ``grouped_lora``: q/k/v and gate/up as one function each, +2.8% at 0.5B and +1.6% at 8B
    LoRA on an H200 (bench/RESULTS.md, devS/devT).
    ``cuda_graphs``: True always, None where a layer call is small enough to be host-bound
    (engine.plan.graph_work.HOST_BOUND_WORK) and adapters train, False never; on a CUDA device
    and in one process only (the caller's part: DDP needs autograd's own gradient
    accumulation).
    ``graph_dropout``: layers with LoRA dropout get graphs too, their masks drawn again in the
    recompute (1.20x eager at 0.5B with lora_dropout 0.05, bitwise equal; bench/RESULTS.md, devS).
    ``keep_dequantized``: a 4-bit layer's recompute keeps its dequantized weights for its
    backward; None (the default) where a layer call is host-bound (engine.speed.layer_checkpoint)."""
    applied: list[str] = []
    if uses_adapter and fused_lora:
        from engine.speed.fast_lora import apply_fused_lora

        patched, fallbacks = apply_fused_lora(model)
        if patched:
            applied.append(f"fused-lora({patched}/{patched + sum(fallbacks.values())})")
        if patched and grouped_lora:
            applied += _group(model)
    if not gradient_checkpointing:
        return applied
    installed = None
    if not sharded:
        from engine.speed import layer_checkpoint

        installed = layer_checkpoint.install(
            model,
            offload=offload_activations(activation_offloading, cuda=device == "cuda"),
            save_middle=save_layer_middle,
            cuda_graphs=graphs_wanted(
                cuda_graphs, cuda=device == "cuda", uses_adapter=uses_adapter
            ),
            graph_dropout=graph_dropout,
            keep_dequantized=keep_dequantized,
        )
    if installed is None:
        from engine.models.adapters import enable_transformers_checkpointing

        enable_transformers_checkpointing(model)
        installed = ["checkpoint:transformers"]
    return applied + installed


def _group(model: Any) -> list[str]:
    from engine.speed.grouped_lora import GROUPED_MODEL_TYPES, apply_grouped_lora
    from engine.speed.layer_checkpoint import decoder_layers

    model_type = getattr(getattr(model, "config", None), "model_type", "")
    layers = decoder_layers(model) if model_type in GROUPED_MODEL_TYPES else None
    counts = apply_grouped_lora(layers or [])
    return [f"grouped-lora({name} {n}/{len(layers or [])})" for name, n in counts.items()]

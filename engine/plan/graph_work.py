"""When CUDA graphs of the checkpointed layers pay for themselves (engine.speed.layer_graphs), in a
module without torch so that the estimator (engine.plan.estimate) applies the same rule. Whether
a run wants them at all is engine.config.derived.graphs_wanted."""

from __future__ import annotations

# Tokens x weights of one layer call above which graphs are not worth it: the GPU is the
# bottleneck there, and the static copies in and out cost more than the launches they save.
# Measured on an H200 at 8 x 2048 tokens (bench/RESULTS.md, devR): Qwen2.5-0.5B, 2.4e11, ran
# 1.43x faster with graphs; Llama-3.1-8B, 3.6e12, 2% slower with 0.7 GiB more memory. Below
# the limit at 8B (devT): 1 x 2048 tokens (4.5e11) +29% LoRA and +88% QLoRA, 2 x 2048 +15%.
HOST_BOUND_WORK = 1e12


def host_bound(tokens: int, layer_weights: int) -> bool:
    """Whether a layer call of ``tokens`` tokens through ``layer_weights`` linear weights is
    small enough for the host, not the GPU, to set its time."""
    return tokens * layer_weights <= HOST_BOUND_WORK

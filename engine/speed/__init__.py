"""Everything that computes the same function faster: fused and grouped LoRA projections,
per-layer checkpointing with CUDA graphs, the chunked loss, variable-length attention, fused
kernels and the sync-free 8-bit optimizer, and ``fast_path``, which installs them.

The contract: a module here may change time and memory, never results. Each has a test that
compares losses and gradients against the plain transformers + PEFT path.

May import engine.plan, engine.models, engine.runs, engine.data, engine.config, engine.core."""

"""Models and tokenizers: loading (hub ids, local folders, the embedded SmolLM2, quantization),
weight-file checks and progress, LoRA adapters, and generation for chat and evaluation.

May import engine.runs, engine.data, engine.config and engine.core."""

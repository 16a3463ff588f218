"""Which architectures the chunked loss (engine.speed.loss) handles, and how many rows one
chunk of logits holds. Torch-free, so the estimator counts the same chunks the loss runs."""

from __future__ import annotations

# Architectures whose logits are exactly lm_head(final hidden state), optionally soft-capped.
CHUNKABLE = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "smollm3",
    "olmo2",
}
LOGITS_BUDGET = 64 * 2**20  # elements of one chunk's logits (256 MiB in fp32)


def chunk_rows(vocab: int) -> int:
    return max(128, min(4096, LOGITS_BUDGET // max(vocab, 1)))

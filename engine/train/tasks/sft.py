"""Supervised fine-tuning: next-token cross-entropy over the labelled tokens of each example.

Batches are right-padded on the host with the positions that carry a label listed there, so the
loss never waits for the GPU to find them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.speed.loss import supports_chunked_loss

IGNORE = -100


def collate(examples: Sequence[Any], pad_token_id: int, device: str) -> dict[str, Any]:
    """Right-pad to the longest example. Packed rows carry position_ids and no attention_mask,
    which makes transformers build a per-document causal mask; rows of equal length carry no
    mask at all (an all-ones mask is the same function, and checking one would wait for the
    GPU). ``trained_index`` lists the predicted positions that carry a label, so the loss
    gathers them without a data-dependent (GPU-waiting) boolean mask."""
    import torch

    width = max(len(ex.input_ids) for ex in examples)
    packed = any(getattr(ex, "position_ids", None) for ex in examples)
    padded = any(len(ex.input_ids) != width for ex in examples)
    ids, labels, mask, positions = [], [], [], []
    for ex in examples:
        pad = width - len(ex.input_ids)
        ids.append(list(ex.input_ids) + [pad_token_id] * pad)
        labels.append(list(ex.labels) + [IGNORE] * pad)
        mask.append([1] * len(ex.input_ids) + [0] * pad)
        base = (
            list(ex.position_ids)
            if getattr(ex, "position_ids", None)
            else list(range(len(ex.input_ids)))
        )
        positions.append(base + list(range(pad)))  # padding forms its own (unlabelled) document
    rows = [ids, labels, positions if packed else mask]
    stacked = torch.tensor(rows, dtype=torch.long)
    trained_index = (stacked[1, :, 1:] != IGNORE).reshape(-1).nonzero().squeeze(1)
    input_ids, label_ids, third = to_device(stacked, device).unbind(0)
    batch = {"input_ids": input_ids, "labels": label_ids}
    if packed:
        batch["position_ids"] = third
        batch.update(_document_kwargs(stacked[2], device))
    elif padded:
        batch["attention_mask"] = third
    batch["trained_index"] = to_device(trained_index, device)
    return batch


def _document_kwargs(positions: Any, device: str) -> dict[str, Any]:
    """Where each packed document starts in the batch laid end to end (from the host's
    position ids): the variable-length attention's arguments, under transformers' names
    (engine.speed.varlen)."""
    from engine.speed.varlen import document_bounds

    bounds, longest = document_bounds(positions)
    cu = to_device(bounds, device)
    return {
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def to_device(tensor: Any, device: str) -> Any:
    """On a GPU through pinned memory without blocking: a plain copy from pageable memory
    would wait for every step already queued."""
    import torch

    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def trained_token_count(examples: Sequence[Any]) -> int:
    # Position 0 is never predicted (labels are shifted by one), so it never counts.
    return sum(sum(1 for label in ex.labels[1:] if label != IGNORE) for ex in examples)


def batch_loss_sum(
    model: Any, batch: dict[str, Any], amp_dtype: Any, device: str, chunked: bool = False
):
    """Summed cross-entropy over the trained tokens of one micro-batch."""
    import torch

    from engine.speed.loss import chunked_loss_sum, full_logits_loss_sum

    inputs = {k: v for k, v in batch.items() if k not in ("labels", "trained_index")}
    with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None):
        if chunked:
            return chunked_loss_sum(
                model, inputs, batch["labels"], trained_index=batch.get("trained_index")
            )
        return full_logits_loss_sum(model, inputs, batch["labels"])


class SftTask:
    """engine.train.tasks.task.Task for SFT. Each method looks its function up in this module
    when called, so a test that patches the module's function patches the task too."""

    def collate(self, examples: Sequence[Any], pad_token_id: int, device: str) -> dict[str, Any]:
        return collate(examples, pad_token_id, device)

    def loss_sum(
        self, model: Any, batch: dict[str, Any], amp_dtype: Any, device: str, chunked: bool
    ) -> Any:
        return batch_loss_sum(model, batch, amp_dtype, device, chunked)

    def trained_token_count(self, examples: Sequence[Any]) -> int:
        return trained_token_count(examples)

    def supports_chunked_loss(self, model: Any) -> bool:
        return supports_chunked_loss(model)

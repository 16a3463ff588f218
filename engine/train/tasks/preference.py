"""DPO, ORPO and SimPO as an engine.train.tasks.task.Task: one forward over a pair batch
(KTO's task, engine.train.tasks.kto, batches its examples the same way).

A micro-batch of B pairs is one right-padded [2B, T] batch, the chosen rows first (TRL's
concatenated forward): the decoder runs once, then the head scores the response tokens chunk
by chunk (engine.speed.sequence_logps), on the same fast path as SFT (fused LoRA, per-layer
checkpointing: they live in the decoder's layers). The loss is TRL's mean over the micro-
batch's pairs; ``loss_sum`` returns it times the pairs and ``trained_token_count`` counts pairs,
so the loop's division by the global batch's count gives the pair-weighted mean.

Each step's metrics (TRL's names: rewards/margins, rewards/accuracies, ...) are summed here,
pair-weighted, by the training passes and taken by the loop once a step (``take_metrics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.speed.loss import IGNORE, supports_chunked_loss
from engine.speed.sequence_logps import SequenceLogps, model_response_logps
from engine.train.tasks import sft
from engine.train.tasks.preference_loss import PreferenceLossSettings, mean_nll, pair_loss
from engine.train.tasks.task import MetricSums


def collate(
    examples: Sequence[Any], pad_token_id: int, device: str, *, whole_chosen: bool = False
) -> dict[str, Any]:
    """The pairs' [2B, T] batch, the chosen rows first (each example's ``sides()``: KTO's
    completion, then its KL sequence), with each pair's reference totals ([2, B]: chosen,
    rejected) where the examples carry them. ``whole_chosen`` (ORPO): the chosen rows are
    scored over every real token, prompt included, for TRL's NLL term; ``response`` then
    marks their response positions."""
    import torch

    sides = [example.sides() for example in examples]
    rows = [first for first, _ in sides] + [second for _, second in sides]
    batch = sft.collate(rows, pad_token_id, device)
    del batch["trained_index"]  # sequence_logps finds the response positions itself
    batch["pairs"] = len(examples)
    if whole_chosen:
        # On the device, from what collate put there: no host copy waits for queued work.
        labels, count = batch["labels"], len(examples)
        batch["response"] = labels[:count, 1:] != IGNORE
        whole = batch["input_ids"][:count]
        if "attention_mask" in batch:  # padded rows: their padding is never scored
            whole = whole.masked_fill(batch["attention_mask"][:count] == 0, IGNORE)
        batch["labels"] = torch.cat([whole, labels[count:]])
    references = [pair.reference for pair in examples]
    if all(reference is not None for reference in references):
        table = torch.tensor(references, dtype=torch.float64).t().contiguous()
        batch["reference"] = sft.to_device(table, device)
    return batch


def score(model: Any, batch: dict[str, Any], chunked: bool, squares: bool) -> SequenceLogps:
    """Response log-probs of every row of ``batch``: the decoder once, the head in chunks
    where the model allows it, else (an unusual head) from its full logits."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask") if key in batch}
    if chunked:
        return model_response_logps(model, inputs, batch["labels"], with_log_sum_sq_probs=squares)
    return full_logits_logps(model, inputs, batch["labels"], squares)


def full_logits_logps(model: Any, inputs: dict[str, Any], labels: Any, squares: bool) -> Any:
    """The plain path: log-softmax of the model's own logits, gathered at the labels."""
    import torch

    logits = model(**inputs, use_cache=False).logits[:, :-1]
    logps = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    targets = labels[:, 1:]
    mask = targets != IGNORE
    token = logps.gather(2, targets.clamp(min=0)[..., None]).squeeze(2) * mask
    sq = (torch.logsumexp(2 * logps, dim=-1) * mask).detach() if squares else None
    return SequenceLogps(token=token, mask=mask, log_sum_sq_probs=sq)


class PreferenceTask:
    """engine.train.tasks.task.Task for dpo, orpo and simpo."""

    def __init__(self, settings: PreferenceLossSettings) -> None:
        if settings.task not in ("dpo", "orpo", "simpo"):
            raise ValueError(f"PreferenceTask trains dpo, orpo or simpo, not {settings.task!r}")
        self.settings = settings
        self._metrics = MetricSums()

    def collate(self, examples: Sequence[Any], pad_token_id: int, device: str) -> dict[str, Any]:
        return collate(examples, pad_token_id, device, whole_chosen=self.settings.task == "orpo")

    def loss_sum(
        self, model: Any, batch: dict[str, Any], amp_dtype: Any, device: str, chunked: bool
    ) -> Any:
        """The micro-batch's mean loss times its pairs; the metrics of a pass that trains
        (autograd on) are added to the step's."""
        import torch

        s, pairs = self.settings, batch["pairs"]
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None):
            logps = score(model, batch, chunked, squares=s.use_weighting)
        chosen, rejected = split_sides(logps, pairs)
        nll = None
        if s.task == "orpo":
            nll = mean_nll(chosen)
            chosen = chosen.within(batch["response"])
        reference = None
        if s.needs_reference:
            if "reference" not in batch:
                raise ValueError("DPO needs each pair's reference log-probs (reference_logps)")
            ref = batch["reference"].to(chosen.token.dtype)
            reference = (ref[0], ref[1])
        result = pair_loss(s, chosen, rejected, reference=reference, chosen_nll=nll)
        if torch.is_grad_enabled():
            self._metrics.add(result.metrics, dict.fromkeys(result.metrics, float(pairs)))
        return result.loss * pairs

    def trained_token_count(self, examples: Sequence[Any]) -> int:
        return len(examples)  # the loss is a mean over pairs: the loop divides by pairs

    def supports_chunked_loss(self, model: Any) -> bool:
        return supports_chunked_loss(model)

    def take_metrics(self) -> dict[str, tuple[Any, float]]:
        """The metrics since the last call, each a mean over its micro-batch's pairs: their
        pair-weighted sums (0-d tensors, read when the caller chooses) and the pairs."""
        return self._metrics.take()


def split_sides(logps: SequenceLogps, pairs: int) -> tuple[SequenceLogps, SequenceLogps]:
    """The chosen rows (the first ``pairs``) and the rejected ones of a pair batch's scores."""

    def rows(part: slice) -> SequenceLogps:
        squares = logps.log_sum_sq_probs
        return SequenceLogps(
            token=logps.token[part],
            mask=logps.mask[part],
            log_sum_sq_probs=None if squares is None else squares[part],
        )

    return rows(slice(0, pairs)), rows(slice(pairs, None))

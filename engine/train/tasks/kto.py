"""KTO as an engine.train.tasks.task.Task: unpaired completions, each judged desirable or not.

A micro-batch of B examples is one [2B, T] batch: the completions, then their KL sequences
(each prompt with another example's completion, engine.data.prepare_preference.kto_examples),
one forward as for the pairs (engine.train.tasks.preference.collate). KTO's reference point z0
is the batch's mean policy-minus-reference log-prob on the KL sequences, clamped at 0 and
without gradient (TRL 1.16 KTOTrainer); apo_zero_unpaired has none. The reference's totals of
both sequences come from the starting weights, scored once (engine.train.tasks.pair_scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.speed.loss import supports_chunked_loss
from engine.train.tasks.preference import collate, score, split_sides
from engine.train.tasks.preference_loss import PreferenceLossSettings, kto_loss
from engine.train.tasks.sft import to_device
from engine.train.tasks.task import MetricSums

# Every metric KTO reports, and which examples each averages over: a step of several ranks
# sums the same names everywhere, so one a micro-batch lacks is added with weight 0.
KTO_METRICS = {
    "rewards/chosen": "desirable",
    "logps/chosen": "desirable",
    "rewards/rejected": "undesirable",
    "logps/rejected": "undesirable",
    "rewards/margins": "both",
    "kl": "all",
}


class KtoTask:
    """engine.train.tasks.task.Task for kto."""

    def __init__(self, settings: PreferenceLossSettings) -> None:
        if settings.task != "kto":
            raise ValueError(f"KtoTask trains kto, not {settings.task!r}")
        self.settings = settings
        self._metrics = MetricSums()

    def collate(self, examples: Sequence[Any], pad_token_id: int, device: str) -> dict[str, Any]:
        import torch

        batch = collate(examples, pad_token_id, device)
        batch["desirable"] = to_device(torch.tensor([ex.desirable for ex in examples]), device)
        batch["desirable_count"] = sum(1 for ex in examples if ex.desirable)  # on the host
        return batch

    def loss_sum(
        self, model: Any, batch: dict[str, Any], amp_dtype: Any, device: str, chunked: bool
    ) -> Any:
        """The micro-batch's mean KTO loss times its examples; a training pass's metrics are
        added to the step's, each weighted by the examples it averages over."""
        import torch

        count, desirable = batch["pairs"], batch["desirable"]
        if "reference" not in batch:
            raise ValueError("KTO needs each example's reference log-probs (reference_logps)")
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None):
            logps = score(model, batch, chunked, squares=False)
        completion, kl_side = split_sides(logps, count)
        ref = batch["reference"].to(completion.token.dtype)
        kl = None
        if self.settings.loss_types != ("apo_zero_unpaired",):
            kl = (kl_side.total.detach(), ref[1])
        result = kto_loss(self.settings, completion.total, desirable, ref[0], kl)
        if torch.is_grad_enabled():
            self._add_metrics(result.metrics, batch["desirable_count"], count)
        return result.loss * count

    def _add_metrics(self, metrics: dict[str, Any], chosen: int, count: int) -> None:
        counts = {"desirable": chosen, "undesirable": count - chosen, "all": count}
        counts["both"] = count if 0 < chosen < count else 0
        zero = next(iter(metrics.values())).new_zeros(())
        self._metrics.add(
            {key: metrics.get(key, zero) for key in KTO_METRICS},
            {key: float(counts[kind]) for key, kind in KTO_METRICS.items()},
        )

    def trained_token_count(self, examples: Sequence[Any]) -> int:
        return len(examples)  # the loss is a mean over examples: the loop divides by them

    def supports_chunked_loss(self, model: Any) -> bool:
        return supports_chunked_loss(model)

    def take_metrics(self) -> dict[str, tuple[Any, float]]:
        return self._metrics.take()

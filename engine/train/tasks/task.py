"""What the trainer needs from a training objective: the seam where SFT, preference and GRPO
tasks plug into the one loop (engine.train.trainer).

The loop owns the data order, accumulation, the execution mode and the run's life; a task owns
what a micro-batch is and how its loss is summed. The loss is a sum over trained tokens, not a
mean, so the loop can normalise it by the trained tokens of the whole global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


class Task(Protocol):
    def collate(self, examples: Sequence[Any], pad_token_id: int, device: str) -> dict[str, Any]:
        """One micro-batch of ``examples`` on ``device``, as ``loss_sum`` takes it."""
        ...

    def loss_sum(
        self, model: Any, batch: dict[str, Any], amp_dtype: Any, device: str, chunked: bool
    ) -> Any:
        """The loss of ``batch`` summed over its trained tokens (a 0-d tensor)."""
        ...

    def trained_token_count(self, examples: Sequence[Any]) -> int:
        """The tokens of ``examples`` that carry a loss: the loop divides the summed loss by it."""
        ...

    def supports_chunked_loss(self, model: Any) -> bool:
        """Whether ``loss_sum`` can run with ``chunked=True`` on ``model``."""
        ...


@runtime_checkable
class ReportsMetrics(Protocol):
    """A task with metrics of its own beside the loss (the preference tasks' rewards): the loop
    takes them once a step and carries them in the Step event."""

    def take_metrics(self) -> dict[str, tuple[Any, float]]:
        """Each metric since the last call as (its sum weighted by the examples it averages,
        a 0-d tensor, and their count); then starts again. A metric with count 0 had no
        examples (KTO's chosen rewards in a step without a desirable example)."""
        ...


class MetricSums:
    """What a ReportsMetrics task keeps: weighted sums of its metrics, by name."""

    def __init__(self) -> None:
        self._sums: dict[str, tuple[Any, float]] = {}

    def add(self, metrics: dict[str, Any], weights: dict[str, float]) -> None:
        """``metrics[key]`` (a 0-d tensor, a mean) over ``weights[key]`` examples."""
        for key, value in metrics.items():
            weight = weights[key]
            total, count = self._sums.get(key, (0.0, 0.0))
            self._sums[key] = (total + value.detach().double() * weight, count + weight)

    def take(self) -> dict[str, tuple[Any, float]]:
        sums, self._sums = self._sums, {}
        return sums

"""Health alarms: signs that a run is going wrong, each raised once with a remedy.

The trainer feeds every logged step and eval here; warnings go out as Alarm events (shown on the
dashboard and in the log). A non-finite loss or gradient norm is not a warning: the trainer
shows its alarm (``non_finite_alarm``) and stops the run before anything more is saved.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from engine.core.events import Alarm

GRAD_SPIKE_FACTOR = 10.0  # a grad norm this many times the recent median
THROUGHPUT_DROP = 0.4  # tokens/s below this share of the recent median
EVAL_RISES = 2  # consecutive evals above the best so far
WINDOW = 20


class HealthMonitor:
    def __init__(self) -> None:
        self._grad_norms: deque[float] = deque(maxlen=WINDOW)
        self._throughput: deque[float] = deque(maxlen=WINDOW)
        self._best_eval: float | None = None
        self._eval_rises = 0
        self._raised: set[str] = set()

    def on_step(self, step: int, grad_norm: float | None, tokens_per_s: float) -> list[Alarm]:
        alarms = []
        if grad_norm is not None and len(self._grad_norms) >= 5:
            median = statistics.median(self._grad_norms)
            if median > 0 and grad_norm > GRAD_SPIKE_FACTOR * median:
                alarms += self._raise(
                    "grad_norm_spike",
                    step,
                    f"Gradient norm {grad_norm:.3g} at step {step} is {grad_norm / median:.0f}x the recent median.",
                    "Lower training.learning_rate or raise warmup_steps; keep max_grad_norm at 1.0 or below.",
                )
        if grad_norm is not None:
            self._grad_norms.append(grad_norm)
        if len(self._throughput) >= 5:
            median = statistics.median(self._throughput)
            if median > 0 and tokens_per_s < THROUGHPUT_DROP * median:
                alarms += self._raise(
                    "throughput_drop",
                    step,
                    f"Throughput fell to {tokens_per_s:,.0f} tokens/s at step {step} "
                    f"(recent median {median:,.0f}).",
                    "Check for another process on the same GPU/CPU (nvidia-smi, top), thermal throttling, "
                    "or swapping; a slow disk can stall checkpoints.",
                )
        self._throughput.append(tokens_per_s)
        return alarms

    def on_eval(self, step: int, loss: float) -> list[Alarm]:
        if self._best_eval is None or loss < self._best_eval:
            self._best_eval, self._eval_rises = loss, 0
            return []
        self._eval_rises += 1
        if self._eval_rises < EVAL_RISES:
            return []
        return self._raise(
            "eval_loss_rising",
            step,
            f"Eval loss rose for {self._eval_rises} evaluations in a row (best {self._best_eval:.4f}, "
            f"now {loss:.4f}): the model may be overfitting.",
            "Stop and keep the best checkpoint, lower num_train_epochs or learning_rate, or add data.",
        )

    def _raise(self, kind: str, step: int, message: str, remedy: str) -> list[Alarm]:
        # Once per kind: a dashboard full of the same warning hides everything else.
        if kind in self._raised:
            return []
        self._raised.add(kind)
        return [Alarm(kind=kind, step=step, message=message, remedy=remedy)]


def non_finite_alarm(step: int, loss: float, grad_norm: float | None) -> Alarm | None:
    """The alarm for a step whose loss or gradient norm is NaN or infinite; None when both are
    finite (``grad_norm`` None: not checked)."""
    if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
        return None
    what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {grad_norm}"
    return Alarm(
        kind="non_finite",
        step=step,
        message=f"The {what} at step {step}; the run was stopped before saving that update.",
        remedy="Lower training.learning_rate (or lora.lora_alpha), keep training.max_grad_norm at "
        "1.0 or below, or check the data; then start a new run.",
    )

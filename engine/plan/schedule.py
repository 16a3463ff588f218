"""How a run walks its data: steps per epoch, each epoch's example order, batches per rank.

Torch-free, so the estimator (engine.plan.estimate) and the token-length measure count steps
exactly as the trainer takes them."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config.derived import TrainSettings


def steps_per_epoch(num_examples: int, micro_batch: int, grad_accum: int, world: int = 1) -> int:
    return max(1, math.ceil(num_examples / (micro_batch * grad_accum * world)))


def run_steps(
    num_examples: int,
    *,
    micro_batch: int,
    grad_accum: int,
    epochs: float,
    max_steps: int,
    world: int = 1,
) -> int:
    """Optimizer steps of a whole run: max_steps when set, else the epochs' steps (at least 1)."""
    if max_steps > 0:
        return max_steps
    per_epoch = steps_per_epoch(num_examples, micro_batch, grad_accum, world)
    return max(1, math.ceil(epochs * per_epoch))


def total_steps(num_examples: int, settings: TrainSettings, world: int = 1) -> int:
    """run_steps of the trainer's settings."""
    return run_steps(
        num_examples,
        micro_batch=settings.micro_batch,
        grad_accum=settings.grad_accum,
        epochs=settings.epochs,
        max_steps=settings.max_steps,
        world=world,
    )


def batches_per_rank(examples: int, world: int, batch: int) -> int:
    """Forward passes each rank runs over ``examples`` split across ``world`` ranks: the same on
    every rank, since DDP's all-reduce and FSDP's gathers are collectives."""
    return math.ceil(math.ceil(examples / world) / batch)


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch; a pure function of (seed, epoch) so resume can rebuild it."""
    order = list(range(num_examples))
    random.Random(f"finetty-{seed}-{epoch}").shuffle(order)
    return order

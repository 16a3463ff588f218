"""The execution mode as one object: one process, DDP or FSDP. The trainer's loop calls the same
methods in every mode and never asks which one it runs in.

A strategy owns what differs between the modes: wrapping the model, which rank holds which
examples, when gradients are reduced, the gradient norm's value, sums across ranks, and how
checkpoints are written and read (whole on rank 0, or one shard per rank). Each method is a
collective in the modes with several ranks: every rank calls it, in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from engine.parallel import distributed
from engine.parallel.distributed import DistContext
from engine.plan.schedule import batches_per_rank
from engine.runs import checkpoint as ckpt

LossFn = Callable[[Any, dict[str, Any]], Any]
# Ranks other than 0 reseed on resume so that their dropout streams differ from before the stop.
RESUME_SEED_STRIDE = 7919


class ExecutionStrategy(Protocol):
    world: int  # how many ranks split each global batch
    is_main: bool  # the rank that owns the run directory, reads commands and emits events
    allows_chunked_loss: bool  # whether the loss may call the decoder and the head apart
    reads_metrics_late: bool  # whether a step's loss may be read a step late (no sum to wait on)
    retries_out_of_memory: bool  # whether an OOM may shrink the micro-batch on this rank alone
    writes_checkpoints: bool  # whether this rank writes (its part of) each checkpoint

    def prepare(self, model: Any, optim: str, loss_fn: LossFn) -> None:
        """Wrap ``model`` for this mode, before the optimizer is built over its parameters."""
        ...

    def seed_rank(self, seed: int, step: int = 0) -> None:
        """Give this rank its own random stream (dropout masks), at the start or on resume."""
        ...

    def loss(self, batch: dict[str, Any]) -> Any:
        """The micro-batch's summed loss, through the wrapper that syncs its gradients."""
        ...

    def gradient_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager[Any]:
        """Around a micro-batch's backward: gradients are reduced on the last one only."""
        ...

    def clip_grad_norm(self, params: list[Any], max_norm: float) -> Any: ...

    def grad_norm(self, norm: Any, defer: bool) -> Any:
        """``clip_grad_norm``'s result as the step reports it: a float, or with ``defer`` a
        tensor still on the device."""
        ...

    def shard(self, examples: Sequence[Any]) -> list[Any]:
        """This rank's slice of a global batch."""
        ...

    def step_loss_sum(self, loss_sum: Any) -> Any:
        """The global batch's summed loss from this rank's part of it."""
        ...

    def step_sums(self, sums: Any) -> Any:
        """A 1-d tensor of this rank's sums (a task's metrics), summed over the ranks: left
        on the device where there is one rank (read late, like the loss), else on the host."""
        ...

    def sum_floats(self, values: Sequence[float]) -> list[float]: ...

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        ...

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order; None elsewhere."""
        ...

    def eval_batches(self, examples: int, batch: int) -> int | None:
        """How many eval forwards every rank must run (None: as many as its examples need)."""
        ...

    def save_checkpoint(
        self,
        directory: Path,
        *,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        state: ckpt.TrainerState,
        is_adapter: bool,
        keep: int | None,
    ) -> Path: ...

    def load_checkpoint(
        self,
        path: Path,
        *,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        max_step: int | None,
        examples: int | None,
    ) -> ckpt.TrainerState: ...


class SingleProcess:
    """One process on one device: nothing to wrap, sum or split."""

    world = 1
    is_main = True
    allows_chunked_loss = True
    reads_metrics_late = True
    retries_out_of_memory = True
    writes_checkpoints = True

    def __init__(self) -> None:
        self.model: Any = None
        self.loss_fn: LossFn | None = None

    def prepare(self, model: Any, optim: str, loss_fn: LossFn) -> None:
        self.model, self.loss_fn = model, loss_fn

    def seed_rank(self, seed: int, step: int = 0) -> None:
        return None  # the seed set before the model was built is this process's stream

    def loss(self, batch: dict[str, Any]) -> Any:
        if self.loss_fn is None:
            raise RuntimeError("SingleProcess.prepare must run before SingleProcess.loss")
        return self.loss_fn(self.model, batch)

    def gradient_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: list[Any], max_norm: float) -> Any:
        import torch

        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def grad_norm(self, norm: Any, defer: bool) -> Any:
        return norm if defer else float(norm)

    def shard(self, examples: Sequence[Any]) -> list[Any]:
        return list(examples)

    def step_loss_sum(self, loss_sum: Any) -> Any:
        return loss_sum  # stays on the device: reading it is the deferred metrics' job

    def step_sums(self, sums: Any) -> Any:
        return sums

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        return list(values)

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]

    def eval_batches(self, examples: int, batch: int) -> int | None:
        return None

    def save_checkpoint(
        self,
        directory: Path,
        *,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        state: ckpt.TrainerState,
        is_adapter: bool,
        keep: int | None,
    ) -> Path:
        return ckpt.save_checkpoint(
            directory,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            state=state,
            is_adapter=is_adapter,
            keep=keep,
        )

    def load_checkpoint(
        self,
        path: Path,
        *,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        max_step: int | None,
        examples: int | None,
    ) -> ckpt.TrainerState:
        return ckpt.load_checkpoint(
            path,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            max_step=max_step,
            examples=examples,
        )


class _SeveralRanks(SingleProcess):
    """What DDP and FSDP share: each rank takes a strided slice of the global batch, rank 0
    decides, and control traffic and sums go over the gloo control group
    (engine.parallel.distributed)."""

    reads_metrics_late = False  # the step's loss is summed across ranks at once
    # Ranks cannot agree on a smaller micro-batch without another collective in the failure
    # path, so a run of several ranks reports the OOM instead of retrying.
    retries_out_of_memory = False

    def __init__(self, ctx: DistContext, device: str) -> None:
        super().__init__()
        self.ctx, self.device = ctx, device
        self.world, self.is_main = ctx.world_size, ctx.is_main

    def seed_rank(self, seed: int, step: int = 0) -> None:
        if self.ctx.is_main:
            return  # rank 0 keeps the stream the run (or the checkpoint) gave it
        import torch

        # Same LoRA initialisation everywhere (seeded before), different dropout masks; on
        # resume the checkpoint holds rank 0's random state, and the others move on from theirs.
        torch.manual_seed(seed + self.ctx.rank + RESUME_SEED_STRIDE * step)

    def shard(self, examples: Sequence[Any]) -> list[Any]:
        return distributed.shard(examples, self.ctx)

    def step_loss_sum(self, loss_sum: Any) -> Any:
        (total,) = self.sum_floats([float(loss_sum)])
        return total

    def step_sums(self, sums: Any) -> Any:
        import torch

        return torch.tensor(self.sum_floats(sums.tolist()), dtype=torch.float64)

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        return distributed.sum_floats(values, self.ctx)

    def broadcast(self, obj: Any) -> Any:
        return distributed.broadcast(obj, self.ctx)

    def gather(self, obj: Any) -> list[Any] | None:
        return distributed.gather(obj, self.ctx)


class DataParallel(_SeveralRanks):
    """DDP: every rank holds the whole model and optimizer state and gradients are all-reduced,
    so rank 0 alone writes checkpoints (the others' would be the same bytes)."""

    def __init__(self, ctx: DistContext, device: str) -> None:
        super().__init__(ctx, device)
        self.writes_checkpoints = ctx.is_main
        self.ddp: Any = None

    def prepare(self, model: Any, optim: str, loss_fn: LossFn) -> None:
        super().prepare(model, optim, loss_fn)
        self.ddp = distributed.wrap_model(model, self.ctx, self.device, loss_fn)

    def loss(self, batch: dict[str, Any]) -> Any:
        if self.ddp is None:
            raise RuntimeError("DataParallel.prepare must run before DataParallel.loss")
        return self.ddp(batch)

    def gradient_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager[Any]:
        if last_micro_batch:
            return contextlib.nullcontext()
        return self.ddp.no_sync()


class ShardedParallel(_SeveralRanks):
    """FSDP2: parameters, gradients and optimizer states are sharded over the ranks, so every
    rank writes its shard of each checkpoint and runs as many forwards as the others."""

    # FSDP gathers the embeddings, final norm and head in the root module's forward; the chunked
    # loss calls the decoder and the head apart, so sharded runs take the plain path.
    allows_chunked_loss = False
    writes_checkpoints = True

    def prepare(self, model: Any, optim: str, loss_fn: LossFn) -> None:
        from engine.parallel import sharded

        sharded.check_optimizer(optim)
        sharded.shard_model(model)  # before the optimizer: it must hold the shards
        super().prepare(model, optim, loss_fn)

    def gradient_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager[Any]:
        from engine.parallel import sharded

        sharded.set_gradient_sync(self.model, last_micro_batch)
        return contextlib.nullcontext()

    def grad_norm(self, norm: Any, defer: bool) -> Any:
        from engine.parallel import sharded

        return sharded.total_norm(norm)  # a DTensor's global value: read at once in any case

    def eval_batches(self, examples: int, batch: int) -> int | None:
        # Every forward all-gathers weights, so a rank with fewer examples runs filler batches.
        return batches_per_rank(examples, self.world, batch)

    def save_checkpoint(
        self,
        directory: Path,
        *,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        state: ckpt.TrainerState,
        is_adapter: bool,
        keep: int | None,
    ) -> Path:
        from engine.parallel import sharded

        return sharded.save_checkpoint(
            directory,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            state=state,
            keep=keep,
            is_main=self.is_main,
        )

    def load_checkpoint(
        self,
        path: Path,
        *,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        max_step: int | None,
        examples: int | None,
    ) -> ckpt.TrainerState:
        from engine.parallel import sharded

        return sharded.load_checkpoint(
            path,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            max_step=max_step,
            examples=examples,
        )


def execution_strategy(ctx: DistContext | None, *, sharded: bool, device: str) -> ExecutionStrategy:
    """The strategy for a run: one process without a process group, else FSDP when the
    weights are sharded (``sharded``: engine.config.derived.uses_fsdp), else DDP."""
    if ctx is None:
        return SingleProcess()
    if sharded:
        return ShardedParallel(ctx, device)
    return DataParallel(ctx, device)

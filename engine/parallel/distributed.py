"""Several processes, one run: torch.distributed as torchrun or `accelerate launch` sets it up.

One process per GPU. Every rank holds the whole (tokenised) dataset and computes the same
shuffled order, so the examples of a global step are known everywhere and each rank takes its
slice: no sampler state to save, and resume needs only the step position. Rank 0 alone owns the
run directory, reads commands and emits events; the others follow its decisions.

Control traffic (commands, loss, hardware samples) goes over a gloo group on the CPU, so that it
never queues behind the gradient all-reduce on the GPUs, and a dead peer surfaces as an error on
a TCP connection instead of a silent NCCL hang.

The end of a job is ordered (``shutdown``): each rank marks in torchrun's store that it got to
the end, rank 0 waits a bounded time for every mark and names the ranks that never made it, and
no other thread touches the store while the group is torn down. The processes then leave
without the interpreter's own teardown (``leave``): destroy_process_group does not stop gloo's
threads while DDP still holds the group, and C++ threads running into a finalizing interpreter
abort the process (SIGABRT, "terminate called without an active exception"); a rank that
aborts after the run leaves torchrun on node 0 waiting 300 s for it at its exit barrier.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Long enough for a checkpoint of a large model on a slow disk; a paused run sends heartbeats.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
FAILURE_KEY = "finetty/failed/{rank}"
ENDED_KEY = "finetty/ended/{rank}"
# How long rank 0, at its own end, waits for the other ranks to get to theirs. They finish
# their share before rank 0 (which alone writes the final model), so this is slack, not work.
END_TIMEOUT = datetime.timedelta(seconds=60)
# The store is used by the engine thread and by rank 0's main thread (peer_failures); teardown
# takes this lock so that no thread is inside the store while the group goes away.
_STORE_LOCK = threading.Lock()


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    control_group: Any = None  # the gloo process group for control traffic

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True inside a process started by torchrun / accelerate with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


def init_from_env(use_cpu: bool) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, ...)."""
    import torch
    import torch.distributed as dist

    from engine.core.errors import ConfigError

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ["WORLD_SIZE"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = torch.cuda.is_available() and not use_cpu
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"Rank {rank} was given local GPU {local_rank}, but this node has "
                f"{torch.cuda.device_count()} visible GPU(s).",
                hint="Start no more processes per node than GPUs (--gpus N, or torchrun "
                "--nproc-per-node N), and check CUDA_VISIBLE_DEVICES.",
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=COLLECTIVE_TIMEOUT,
            **({"device_id": torch.device("cuda", local_rank)} if cuda else {}),
        )
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if cuda else None
    return DistContext(rank, local_rank, world, local_world, control)


def shutdown(
    ctx: DistContext, *, clean: bool, timeout: datetime.timedelta = END_TIMEOUT
) -> list[int]:
    """End this rank's part of the job; on rank 0, the ranks that did not get to the end.

    ``clean``: the run finished or stopped, so every rank is on its way out and rank 0 waits
    (at most ``timeout``) for their marks. After a failure nobody waits: the others may be dead.
    """
    import torch.distributed as dist

    # The teardown itself must not hang a node either (a store that stopped answering, a
    # destroy that never returns, maybe holding the GIL): past this, faulthandler's own thread
    # prints where each thread stood and exits the process with 1.
    limit = 2 * timeout.total_seconds() + 10
    with contextlib.suppress(OSError, ValueError, RuntimeError):  # no descriptor behind stderr
        faulthandler.dump_traceback_later(limit, exit=True)
    try:
        with _STORE_LOCK:
            if not dist.is_initialized():
                return []
            store = _store()
            unended: list[int] = []
            if store is not None:
                unended = _meet_at_the_end(store, ctx, timeout) if clean else []
            dist.destroy_process_group()
            return unended
    finally:
        faulthandler.cancel_dump_traceback_later()


def _meet_at_the_end(store: Any, ctx: DistContext, timeout: datetime.timedelta) -> list[int]:
    """Mark this rank's end; rank 0 waits for the others' marks and returns the missing ranks."""
    try:
        store.set(ENDED_KEY.format(rank=ctx.rank), "1")
    except Exception:  # noqa: BLE001 - node 0's store gone: rank 0 reports this rank as missing
        return []
    if not ctx.is_main:
        return []
    keys = [ENDED_KEY.format(rank=rank) for rank in range(1, ctx.world_size)]
    try:
        store.wait(keys, timeout)
        return []
    except Exception:  # noqa: BLE001 - a timeout: find out whose mark is missing
        pass
    missing = []
    for rank, key in enumerate(keys, start=1):
        try:
            if not store.check([key]):
                missing.append(rank)
        except Exception:  # noqa: BLE001 - a store that stopped answering: nobody is confirmed
            return list(range(1, ctx.world_size))
    return missing


def unended_message(ranks: Sequence[int], timeout: datetime.timedelta = END_TIMEOUT) -> str:
    """What rank 0 says about ranks that did not get to the end of the job."""
    names = ", ".join(str(rank) for rank in ranks)
    return (
        f"Rank{'s' if len(ranks) > 1 else ''} {names} did not get to the end of the job within "
        f"{timeout.total_seconds():.0f} s of rank 0: {'they' if len(ranks) > 1 else 'it'} "
        "died or hung after training. Rank 0's run directory is complete; the output of the "
        "node running that rank says why (torchrun's summary names its exit code)."
    )


def leave(code: int) -> None:
    """End a rank's process now, skipping the interpreter's teardown (see the module docstring).

    Everything this process wrote is closed by then; only Python's own buffers need a flush."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed or broken pipe: nothing more can reach it anyway.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def shard(examples: Sequence[Any], ctx: DistContext | None) -> list[Any]:
    """This rank's slice of a global step's examples (strided, so lengths spread evenly)."""
    if ctx is None:
        return list(examples)
    return list(examples[ctx.rank :: ctx.world_size])


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, group=ctx.control_group)
    return box[0]


def sum_floats(values: Sequence[float], ctx: DistContext) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=ctx.control_group)
    return tensor.tolist()


def gather(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0, group=ctx.control_group)
    return out


def _store() -> Any:
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store, no cross-node error report; the log still has it
        return None


def report_failure(ctx: DistContext, kind: str, title: str, message: str, hint: str | None) -> None:
    """Leave this rank's error where rank 0 can read it, across nodes: torchrun's key-value store."""
    store = _store()
    if store is None:
        return
    record = {"rank": ctx.rank, "kind": kind, "title": title, "message": message, "hint": hint}
    try:
        store.set(FAILURE_KEY.format(rank=ctx.rank), json.dumps(record))
    except Exception:  # noqa: BLE001 - the store may already be gone while the job tears down
        return


def peer_failures(ctx: DistContext) -> list[dict[str, Any]]:
    """Errors other ranks left in the store, lowest rank first (none once the group is gone)."""
    with _STORE_LOCK:  # waits out a shutdown, after which there is no store to ask
        store = _store()
        if store is None:
            return []
        found = []
        for rank in range(ctx.world_size):
            key = FAILURE_KEY.format(rank=rank)
            try:
                if rank != ctx.rank and store.check([key]):
                    found.append(json.loads(store.get(key)))
            except Exception:  # noqa: BLE001 - a store that stopped answering has nothing to say
                break
        return found


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(
        sign in text for sign in ("connection reset by peer", "connection closed by peer", "gloo")
    )


def wrap_model(
    model: Any, ctx: DistContext, device: str, loss_fn: Callable[[Any, dict[str, Any]], Any]
) -> Any:
    """DistributedDataParallel around "model + loss", over the trainable parameters only.

    The loss goes inside the wrapped module because the chunked loss calls the decoder and the
    head separately; DDP only syncs gradients of work that passes through its own forward.
    Frozen weights (the 4-bit base of QLoRA, the 16-bit base of LoRA) are identical on every
    rank by construction, so they are left out of DDP's start-up broadcast.
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    class LossModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: dict[str, Any]) -> Any:
            return loss_fn(self.model, batch)

    wrapper = LossModule()
    frozen = [name for name, param in wrapper.named_parameters() if not param.requires_grad]
    frozen += [name for name, _ in wrapper.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(wrapper, frozen)
    return DistributedDataParallel(
        wrapper,
        device_ids=[torch.cuda.current_device()] if device == "cuda" else None,
        gradient_as_bucket_view=True,
    )

"""Full fine-tuning over several GPUs with FSDP2: parameters, gradients and optimizer states are
sharded across ranks (torch.distributed.fsdp.fully_shard), so a model that does not fit one card
trains on several.

Checkpoints are sharded too (torch.distributed.checkpoint: one file per rank plus metadata), in
the same checkpoint-N folders with the same COMPLETE marker, so `--resume` and pruning work as for
one GPU. The final model is gathered into ordinary safetensors on rank 0, so export and chat need
nothing special. Every function here is a collective: all ranks call it, in the same order.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.config.derived import model_load, uses_fsdp
from engine.core.errors import ConfigError, TrainingError
from engine.runs import checkpoint as ckpt


def decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks to shard one by one (each is all-gathered just before it runs)."""
    decoder = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ConfigError(
            f"{type(model).__name__} has no decoder layers that FSDP can shard one by one.",
            hint="Train it on one GPU, or with method: lora (DDP).",
        )
    return list(layers)


def shard_model(model: Any) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)  # the rest: embeddings, final norm, head


def check_launch(preset: Any) -> None:
    """What FSDP refuses, checked before any process starts."""
    if uses_fsdp(preset):
        check_optimizer(preset.training.optim)


def check_optimizer(optim: str) -> None:
    if "8bit" in optim or optim.startswith("paged_"):
        raise ConfigError(
            f"optim {optim} cannot hold FSDP's sharded parameters (bitsandbytes works on whole "
            "tensors).",
            hint="Use optim: adamw_torch (sharded across the GPUs, so its states already take "
            "1/N of the memory each), or train with method: lora.",
        )


def set_gradient_sync(model: Any, enabled: bool) -> None:
    """Reduce-scatter gradients only on the last micro-batch of a step."""
    model.set_requires_gradient_sync(enabled)


def total_norm(norm: Any) -> float:
    """clip_grad_norm_ over sharded parameters returns a DTensor; its value is global."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def save_checkpoint(
    directory: Path,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: ckpt.TrainerState,
    keep: int | None,
    is_main: bool,
) -> Path:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = directory / f"{ckpt.PREFIX}{state.step}"
    staging = directory / f".tmp-{ckpt.PREFIX}{state.step}"
    if is_main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=staging / "sharded")
    except (OSError, RuntimeError) as exc:
        raise TrainingError(
            f"Could not write the sharded checkpoint for step {state.step} in {directory}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. The checkpoints "
            "already there are intact.",
            hint=ckpt.write_failure_hint(exc, directory, [staging]),
        ) from None
    dist.barrier()  # every rank's shard is on disk before the marker says so
    if is_main:
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        ckpt.save_rng_state(staging)
        (staging / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        ckpt.fsync_tree(staging)
        (staging / ckpt.MARKER).write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        ckpt.fsync_tree(directory, files=False)
        ckpt.prune_checkpoints(directory, keep)
    dist.barrier()
    return final


def load_checkpoint(
    path: Path,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    max_step: int | None = None,
    examples: int | None = None,
) -> ckpt.TrainerState:
    """Restore a sharded checkpoint; its plain files are read and checked first, as in
    engine.runs.checkpoint.load_checkpoint (every rank reads the same files, so all decide alike)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from engine.core.errors import RunDirError

    if not (path / "sharded").is_dir():
        raise RunDirError(
            f"{path} was written by a run that was not sharded over GPUs (FSDP).",
            hint="Resume it the way it was started (same --gpus and the same method).",
        )
    state = ckpt.read_trainer_state(path, max_step=max_step, examples=examples)
    scheduler_state = ckpt.read_torch_file(path / "scheduler.pt")
    rng = ckpt.read_rng_state(path)
    model_state, optim_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optim": optim_state}
    dcp.load(loaded, checkpoint_id=path / "sharded")
    set_state_dict(
        model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"]
    )
    scheduler.load_state_dict(scheduler_state)
    ckpt.apply_rng_state(rng)
    return state


def full_state_dict(model: Any) -> dict[str, Any]:
    """The whole model's weights on rank 0's CPU (empty elsewhere), for save_pretrained."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def consolidate(checkpoint: Path, preset: Any, target: Path) -> Path:
    """An ordinary HF folder (safetensors, tokenizer, chat template) from a sharded checkpoint,
    in one process, for a full fine-tune that stopped before writing final/ (a preempted spot
    instance, a Ctrl+C). Written under a temporary name first; reused when already there."""
    import os

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from transformers import AutoModelForCausalLM

    from engine.data.templates import resolve_chat_template
    from engine.models import loading

    if (target / "config.json").is_file():
        return target
    shards = checkpoint / "sharded"
    saved = FileSystemReader(shards).read_metadata().state_dict_metadata
    dtype = next(
        meta.properties.dtype for key, meta in saved.items() if key.startswith("model.")
    )  # the dtype the run trained in
    load = model_load(preset)
    source = loading.resolve_load(load)
    location, kwargs = loading.from_pretrained_args(source, load.revision, load.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    wanted = {"model": model.state_dict()}
    # Tied weights are saved under one name; the tie fills the other.
    dcp.load(
        wanted,
        checkpoint_id=shards,
        planner=DefaultLoadPlanner(allow_partial_load=True),
        no_dist=True,
    )
    model.load_state_dict(wanted["model"])
    tokenizer = loading.load_tokenizer(source)
    tokenizer.chat_template = resolve_chat_template(tokenizer, preset.dataset.chat_template)
    staging = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target)
    return target

"""Resumable checkpoints that are never half-written.

A checkpoint is written into ``checkpoints/.tmp-checkpoint-<step>``; the COMPLETE marker goes in
last, then the folder is renamed to ``checkpoint-<step>``. A crash or a full disk at any moment
leaves either the old set of checkpoints or the new one, never a folder that looks whole but isn't.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import RunDirError, TrainingError

MARKER = "COMPLETE"
PREFIX = "checkpoint-"


@dataclass
class TrainerState:
    step: int
    epoch: int  # the epoch in progress
    examples_done_in_epoch: int  # examples consumed from that epoch's order
    tokens_seen: int
    elapsed_s: float
    best_loss: float | None = None


def save_checkpoint(
    directory: Path,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    state: TrainerState,
    is_adapter: bool,
    keep: int | None,
) -> Path:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    final = directory / f"{PREFIX}{state.step}"
    staging = directory / f".tmp-{PREFIX}{state.step}"
    trainable = {
        name: param.detach().contiguous().cpu()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        save_file(trainable, str(staging / "trainable.safetensors"))
        if is_adapter:
            model.save_pretrained(staging / "adapter")  # a PEFT adapter users can load as-is
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), staging / "scaler.pt")
        _save_rng_state(staging)
        (staging / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        _fsync_tree(staging)  # on power loss the marker must never outlive the data
        (staging / MARKER).write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        _fsync_tree(directory, files=False)
    except (OSError, RuntimeError, SafetensorError) as exc:
        # A full disk surfaces as OSError from Python, SafetensorError from safetensors and
        # RuntimeError from torch.save's zip writer.
        shutil.rmtree(staging, ignore_errors=True)
        raise TrainingError(
            f"Could not write the checkpoint for step {state.step} in {directory}: "
            f"{_reason(exc)}. The checkpoints already there are intact.",
            hint=f"Free disk space (check with `df -h {directory}`), then continue from the last "
            "checkpoint with `finetty train --resume latest`.",
        ) from None
    prune_checkpoints(directory, keep)
    return final


def _fsync_tree(folder: Path, *, files: bool = True) -> None:
    paths = [p for p in folder.rglob("*") if p.is_file()] if files else []
    for path in [*paths, folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def complete_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.glob(f"{PREFIX}*")
        if (p / MARKER).is_file() and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def incomplete_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_dir() and not (p / MARKER).is_file()]


def prune_checkpoints(directory: Path, keep: int | None) -> None:
    if keep is None:
        return
    for old in complete_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path, *, model: Any, optimizer: Any, scheduler: Any, scaler: Any
) -> TrainerState:
    import torch
    from safetensors.torch import load_file

    if not (path / MARKER).is_file():
        raise RunDirError(
            f"{path} is an incomplete checkpoint.", hint="Resume from an earlier one."
        )
    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [name for name in saved if name not in params]
    if missing:
        raise RunDirError(
            f"{path} does not match this model ({len(missing)} unknown tensors, e.g. {missing[0]}).",
            hint="Resume with the same config.yaml the run was started with.",
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    _load_rng_state(path)
    return TrainerState(**json.loads((path / "trainer_state.json").read_text()))


def _save_rng_state(folder: Path) -> None:
    import torch

    version, internal, gauss = random.getstate()
    (folder / "rng_python.json").write_text(json.dumps([version, list(internal), gauss]))
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(tensors, folder / "rng.pt")


def _load_rng_state(folder: Path) -> None:
    import torch

    version, internal, gauss = json.loads((folder / "rng_python.json").read_text())
    random.setstate((version, tuple(internal), gauss))
    tensors = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])

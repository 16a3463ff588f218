"""Resumable checkpoints that are never half-written.

A checkpoint is written into ``checkpoints/.tmp-checkpoint-<step>``; the COMPLETE marker goes in
last, then the folder is renamed to ``checkpoint-<step>``. A crash or a full disk at any moment
leaves either the old set of checkpoints or the new one, never a folder that looks whole but isn't.
Weights or optimizer state holding a NaN or an infinity are never written, and loading reads and
checks every file before applying any, so one damaged checkpoint is refused by name (the caller
then tries the one before it) instead of half-restoring a run.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import pickle
import random
import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import RunDirError, TrainingError, weights_only_refusal

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
    optimizer_state = optimizer.state_dict()
    require_finite(
        [*trainable.items(), *optimizer_tensors(optimizer_state)],
        f"The checkpoint for step {state.step}",
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        save_file(trainable, str(staging / "trainable.safetensors"))
        if is_adapter:
            model.save_pretrained(staging / "adapter")  # a PEFT adapter users can load as-is
        torch.save(optimizer_state, staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), staging / "scaler.pt")
        save_rng_state(staging)
        (staging / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        fsync_tree(staging)  # on power loss the marker must never outlive the data
        (staging / MARKER).write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        fsync_tree(directory, files=False)
    except (OSError, RuntimeError, SafetensorError) as exc:
        # A full disk surfaces as OSError from Python, SafetensorError from safetensors and
        # RuntimeError from torch.save's zip writer.
        shutil.rmtree(staging, ignore_errors=True)
        raise TrainingError(
            f"Could not write the checkpoint for step {state.step} in {directory}: "
            f"{describe_os_error(exc)}. The checkpoints already there are intact.",
            hint=write_failure_hint(exc, directory, [final, staging]),
        ) from None
    prune_checkpoints(directory, keep)
    return final


def write_failure_hint(exc: Exception, directory: Path, inside: Iterable[Path] = ()) -> str:
    """What to do about a failed checkpoint write: only a full disk (or an error that names no
    cause, as safetensors' and torch's writers do) calls for freeing space."""
    code = exc.errno if isinstance(exc, OSError) else None
    resume = "then continue from the last checkpoint with `finetty train --resume latest`."
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        blocker = next(
            (
                p
                for p in [*reversed(directory.parents), directory, *inside]
                if p.exists() and not p.is_dir()
            ),
            directory,
        )
        return f"{blocker} is a file where finetty needs a folder: move it elsewhere, {resume}"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"{directory} is not writable (read-only disk or wrong permissions; try "
            f"`touch {directory}/probe`): fix that, {resume}"
        )
    return f"Free disk space (check with `df -h {directory}`), {resume}"


def optimizer_tensors(state_dict: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The tensors of an optimizer's state_dict, named ``state[<param index>].<key>``."""
    state = state_dict.get("state") if isinstance(state_dict, dict) else None
    for index, entry in (state or {}).items():
        for key, value in entry.items() if isinstance(entry, dict) else ():
            yield f"state[{index}].{key}", value


def non_finite(named: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity. One host read per
    device, so checking a whole model before a save costs one pass over its weights."""
    import torch

    names: dict[Any, list[str]] = {}
    flags: dict[Any, list[Any]] = {}
    for name, tensor in named:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            names.setdefault(tensor.device, []).append(name)
            flags.setdefault(tensor.device, []).append(torch.isfinite(tensor).all())
    bad = []
    for device, found in flags.items():
        finite = torch.stack(found).cpu().tolist()
        bad += [name for name, ok in zip(names[device], finite, strict=True) if not ok]
    return bad


def require_finite(named: Iterable[tuple[str, Any]], what: str) -> None:
    """Refuse to write ``what`` (a checkpoint, the final model) when a tensor is not finite."""
    named = list(named)
    bad = non_finite(named)
    if bad:
        raise TrainingError(
            f"{what} was not written: {len(bad)} of {len(named)} tensors hold NaN or infinite "
            f"values (e.g. {bad[0]}). The training diverged; the checkpoints already saved are "
            "intact and hold only finite values.",
            hint="Lower training.learning_rate (or lora.lora_alpha), keep training.max_grad_norm "
            "at 1.0 or below, or check the data, then start a new run.",
        )


def fsync_tree(folder: Path, *, files: bool = True) -> None:
    """Flush ``folder`` (and, with ``files``, every file below it) to disk, so that a marker or
    a rename written after it never outlives the data on power loss."""
    paths = [p for p in folder.rglob("*") if p.is_file()] if files else []
    for path in [*paths, folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def describe_os_error(exc: Exception) -> str:
    """One short line for a failed read or write: the OS's reason, else the first line."""
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
    path: Path,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    max_step: int | None = None,
    examples: int | None = None,
) -> TrainerState:
    """Restore a run from ``path``. Every file is read and checked before any is applied; a
    damaged or foreign one raises RunDirError naming the file and what is wrong with it.

    ``max_step``: the run's total steps; ``examples``: its training examples (bounds checks).
    """
    import torch

    if not (path / MARKER).is_file():
        raise RunDirError(
            f"{path} is an incomplete checkpoint.", hint="Resume from an earlier one."
        )
    state = read_trainer_state(path, max_step=max_step, examples=examples)
    saved = _read_safetensors(path / "trainable.safetensors")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    _check_trainable(path, saved, params)
    optimizer_state = read_torch_file(path / "optimizer.pt")
    _check_optimizer_state(path / "optimizer.pt", optimizer_state, optimizer)
    scheduler_state = read_torch_file(path / "scheduler.pt")
    if not isinstance(scheduler_state, dict) or set(scheduler_state) != set(scheduler.state_dict()):
        raise RunDirError(
            f"{path / 'scheduler.pt'} is not this run's learning-rate schedule state.",
            hint=_EARLIER,
        )
    scaler_file = path / "scaler.pt"
    scaler_state = (
        read_torch_file(scaler_file) if scaler is not None and scaler_file.is_file() else None
    )
    rng = read_rng_state(path)
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        if scaler_state is not None:
            scaler.load_state_dict(scaler_state)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise RunDirError(
            f"{path} holds optimizer or schedule state that does not fit this run: {describe_os_error(exc)}.",
            hint=_EARLIER,
        ) from None
    apply_rng_state(rng)
    return state


_EARLIER = (
    "A resume uses the newest checkpoint that passes these checks, so an earlier one is taken "
    "instead; to use this one, restore the file from a copy."
)


def _checkpoint_step(path: Path) -> int | None:
    number = path.name[len(PREFIX) :]
    return int(number) if path.name.startswith(PREFIX) and number.isdigit() else None


def read_trainer_state(
    path: Path, *, max_step: int | None = None, examples: int | None = None
) -> TrainerState:
    """trainer_state.json of checkpoint ``path``, checked field by field: integers where
    integers belong, no negative counts, and a step that is the folder's and within the run."""
    file = path / "trainer_state.json"
    data = _read_json(file)
    fields = {field.name for field in dataclasses.fields(TrainerState)}
    if not isinstance(data, dict):
        raise RunDirError(f"{file} does not hold a JSON object.", hint=_EARLIER)
    missing = sorted(fields - set(data) - {"best_loss"})
    unknown = sorted(set(data) - fields)
    if missing or unknown:
        which = (
            f"lacks {', '.join(missing)}" if missing else f"has unknown keys {', '.join(unknown)}"
        )
        raise RunDirError(f"{file} {which}.", hint=_EARLIER)
    for key in ("step", "epoch", "examples_done_in_epoch", "tokens_seen"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RunDirError(
                f"{file}: {key} is {json.dumps(value)[:40]}; it must be a whole number, 0 or more.",
                hint=_EARLIER,
            )
    for key, optional in (("elapsed_s", False), ("best_loss", True)):
        value = data.get(key)
        if value is None and optional:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise RunDirError(
                f"{file}: {key} is {json.dumps(value)[:40]}; it must be a finite number.",
                hint=_EARLIER,
            )
    step, folder_step = data["step"], _checkpoint_step(path)
    if step < 1 or (folder_step is not None and step != folder_step):
        raise RunDirError(
            f"{file}: step is {step}, but this is the checkpoint of step {folder_step}.",
            hint=_EARLIER,
        )
    if max_step is not None and step > max_step:
        raise RunDirError(
            f"{file}: step {step} is past this run's {max_step} steps.", hint=_EARLIER
        )
    if examples is not None and data["examples_done_in_epoch"] > examples:
        raise RunDirError(
            f"{file}: examples_done_in_epoch is {data['examples_done_in_epoch']}, more than the "
            f"{examples} training examples.",
            hint=_EARLIER,
        )
    return TrainerState(**data)


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{file} is missing.", hint=_EARLIER) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunDirError(
            f"{file} is not valid JSON ({describe_os_error(exc)}).", hint=_EARLIER
        ) from None


def _read_safetensors(file: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise RunDirError(f"{file} is missing.", hint=_EARLIER) from None
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise RunDirError(
            f"{file} cannot be read: it is truncated or damaged ({describe_os_error(exc)}).",
            hint=_EARLIER,
        ) from None


def read_torch_file(file: Path) -> Any:
    """A torch.save file, tensors and plain data only: a pickle of anything else is refused,
    because loading it could run code."""
    import torch

    try:
        return torch.load(file, weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"{file} is missing.", hint=_EARLIER) from None
    except pickle.UnpicklingError as exc:
        refused = weights_only_refusal(exc) or "is damaged: it does not unpickle"
        raise RunDirError(f"{file} {refused}.", hint=_EARLIER) from None
    except EOFError:
        raise RunDirError(f"{file} is truncated (it ends early).", hint=_EARLIER) from None
    # struct.error: the unpickler reads an opcode's argument past the end of a cut-off file
    except (
        OSError,
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        struct.error,
    ) as exc:
        raise RunDirError(
            f"{file} cannot be read: it is truncated or damaged ({describe_os_error(exc)}).",
            hint=_EARLIER,
        ) from None


def _check_trainable(path: Path, saved: dict[str, Any], params: dict[str, Any]) -> None:
    unknown = [name for name in saved if name not in params]
    if unknown:
        raise RunDirError(
            f"{path} does not match this model ({len(unknown)} unknown tensors, e.g. {unknown[0]}).",
            hint="Resume with the same config.yaml the run was started with.",
        )
    absent = [name for name in params if name not in saved]
    if absent:
        raise RunDirError(
            f"{path / 'trainable.safetensors'} lacks {len(absent)} of the model's trainable "
            f"tensors (e.g. {absent[0]}).",
            hint=_EARLIER,
        )
    for name, tensor in saved.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise RunDirError(
                f"{path / 'trainable.safetensors'}: {name} has shape {list(tensor.shape)}, the "
                f"model's is {list(params[name].shape)}.",
                hint="Resume with the same config.yaml the run was started with.",
            )
    bad = non_finite(saved.items())
    if bad:
        raise RunDirError(
            f"{path / 'trainable.safetensors'} holds NaN or infinite values in {len(bad)} "
            f"tensors (e.g. {bad[0]}).",
            hint=_EARLIER,
        )


def _check_optimizer_state(file: Path, state: Any, optimizer: Any) -> None:
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not isinstance(state.get("state"), dict):
        raise RunDirError(f"{file} is not an optimizer state.", hint=_EARLIER)
    ours = optimizer.param_groups
    if len(groups) != len(ours) or any(
        not isinstance(group, dict) or len(group.get("params", ())) != len(mine["params"])
        for group, mine in zip(groups, ours, strict=False)
    ):
        raise RunDirError(
            f"{file} holds the state of another optimizer (its parameter groups differ).",
            hint="Resume with the same config.yaml the run was started with.",
        )
    bad = non_finite(optimizer_tensors(state))
    if bad:
        raise RunDirError(
            f"{file} holds NaN or infinite values ({len(bad)} tensors, e.g. {bad[0]}).",
            hint=_EARLIER,
        )


def save_rng_state(folder: Path) -> None:
    import torch

    version, internal, gauss = random.getstate()
    (folder / "rng_python.json").write_text(json.dumps([version, list(internal), gauss]))
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(tensors, folder / "rng.pt")


@dataclass
class RngState:
    python: tuple[Any, ...]
    torch: Any
    cuda: list[Any] | None


def read_rng_state(folder: Path) -> RngState:
    """The random states of a checkpoint, checked (on a scratch generator) before any is set."""
    import torch

    file = folder / "rng_python.json"
    data = _read_json(file)
    try:
        version, internal, gauss = data
        python = (version, tuple(internal), gauss)
        random.Random().setstate(python)
    except (TypeError, ValueError, OverflowError):
        raise RunDirError(f"{file} is not a Python random state.", hint=_EARLIER) from None
    tensors = read_torch_file(folder / "rng.pt")
    current = torch.get_rng_state()
    saved = tensors.get("torch") if isinstance(tensors, dict) else None
    cuda = tensors.get("cuda") if isinstance(tensors, dict) else None
    if (
        not isinstance(saved, torch.Tensor)
        or saved.dtype != current.dtype
        or saved.shape != current.shape
        or not (cuda is None or isinstance(cuda, list | tuple))
        or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda or ())
    ):
        raise RunDirError(f"{folder / 'rng.pt'} is not a torch random state.", hint=_EARLIER)
    return RngState(python, saved, list(cuda) if cuda is not None else None)


def apply_rng_state(rng: RngState) -> None:
    import torch

    random.setstate(rng.python)
    torch.set_rng_state(rng.torch)
    if rng.cuda is not None and torch.cuda.is_available():
        for index, state in enumerate(rng.cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)

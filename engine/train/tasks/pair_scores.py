"""Pairs scored without training: the reference log-probs DPO compares with, and held-out
preference accuracy.

No second model: the reference is the policy before its first step (LoRA's B starts at zero,
so the adapted model is the base; continuing from an SFT adapter, it is that adapter; full
fine-tuning, the loaded weights), scored once, in eval mode and without gradients, for every
train and validation pair. The totals are cached in the run directory under a digest of the
encoded pairs and of what decides the starting weights, so ``--resume`` reads them back
instead of scoring again from weights that have moved, and a resumed run's losses equal an
uninterrupted one's (the same float32 numbers either way).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.core.events import PreferenceAccuracy
from engine.data.prepare_preference import TwoSided
from engine.runs.control import RunAborted
from engine.train.evaluate import Tracker
from engine.train.tasks.preference import collate, score, split_sides
from engine.train.tasks.preference_loss import pair_totals

CACHE_NAME = "reference_logps.safetensors"


def pair_log_probs(
    model: Any,
    pairs: Sequence[TwoSided],
    *,
    batch_size: int,
    pad_token_id: int,
    device: str,
    amp_dtype: Any,
    chunked: bool,
    ld_alpha: float | None = None,
    tracker: Tracker | None = None,
    between: Callable[[], None] | None = None,
) -> list[tuple[float, float]] | None:
    """(chosen, rejected) summed response log-probs of every pair (KTO: completion and KL
    sequence; LD-DPO weighted with ``ld_alpha``), in micro-batches of ``batch_size`` pairs, in eval mode without gradients.
    None when the tracker's should_stop turned true (asked before each micro-batch);
    ``between`` runs before each micro-batch too (a check that raises to abort)."""
    import torch

    from engine.models.adapters import adapter_input_casts_off

    totals: list[tuple[float, float]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), adapter_input_casts_off(model, amp_dtype):
            for start in range(0, len(pairs), batch_size):
                if between is not None:
                    between()
                if tracker is not None and tracker.should_stop():
                    return None
                chunk = pairs[start : start + batch_size]
                batch = collate(chunk, pad_token_id, device)
                with torch.autocast(
                    device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None
                ):
                    logps = score(model, batch, chunked, squares=False)
                chosen, rejected = pair_totals(*split_sides(logps, len(chunk)), ld_alpha)
                totals += zip(chosen.float().tolist(), rejected.float().tolist(), strict=True)
                if tracker is not None:
                    tracker.update(len(totals))
    finally:
        model.train(was_training)
    return totals


def preference_accuracy(totals: Sequence[tuple[float, float]]) -> tuple[int, int]:
    """(pairs whose chosen response is the likelier, pairs)."""
    return sum(1 for chosen, rejected in totals if chosen > rejected), len(totals)


def accuracy_event(
    model: Any,
    pairs: Sequence[TwoSided],
    stage: str,
    *,
    emit: Callable[[Any], None],
    should_stop: Callable[[], bool],
    **scoring: Any,
) -> PreferenceAccuracy | None:
    """Held-out preference accuracy ``stage`` ("before", "after") training, with Progress
    events; None when ``should_stop`` turned true part-way."""
    tracker = Tracker(f"preference accuracy {stage} training", len(pairs), emit, should_stop)
    tracker.update(0, force=True)
    totals = pair_log_probs(model, pairs, tracker=tracker, **scoring)
    if totals is None:
        return None
    tracker.update(len(pairs), force=True)
    correct, total = preference_accuracy(totals)
    return PreferenceAccuracy(stage, correct / max(total, 1), correct, total)


def digest(pairs: Sequence[TwoSided], weights: dict[str, Any]) -> str:
    """What the cached totals depend on: every pair's tokens and labels, and ``weights`` (the
    preset's keys that decide the starting weights and how sequences are summed)."""
    hasher = hashlib.sha256(json.dumps(weights, sort_keys=True, default=str).encode())
    for pair in pairs:
        for side in pair.sides():
            hasher.update(json.dumps([side.input_ids, side.labels]).encode())
    return hasher.hexdigest()


def with_reference(
    model: Any,
    train: list[TwoSided],
    val: list[TwoSided],
    *,
    cache_dir: Path | None,
    weights: dict[str, Any],
    emit: Callable[[Any], None],
    should_stop: Callable[[], bool] | None = None,
    **scoring: Any,
) -> tuple[list[TwoSided], list[TwoSided], bool]:
    """``train`` and ``val`` with their reference totals: read from the run directory's cache
    when its digest matches, else scored now (Progress events with an ETA) and cached there.
    A stop asked while scoring (``should_stop``) ends the run at once: RunAborted, nothing
    cached, no step run.
    ``cache_dir`` None (a rank that does not own the run directory): scored, not cached.
    Returns (train, val, read from the cache)."""
    pairs = [*train, *val]
    key = digest(pairs, weights)
    path = None if cache_dir is None else cache_dir / CACHE_NAME
    totals = None if path is None else _read(path, key, len(pairs))
    cached = totals is not None
    if totals is None:
        tracker = Tracker("reference log-probs", len(pairs), emit, should_stop)
        tracker.update(0, force=True)
        totals = pair_log_probs(model, pairs, tracker=tracker, **scoring)
        if totals is None:
            raise RunAborted()
        tracker.update(len(pairs), force=True)
        if path is not None:
            _write(path, key, totals)
    done = [replace(pair, reference=total) for pair, total in zip(pairs, totals, strict=True)]
    return done[: len(train)], done[len(train) :], cached


def _read(path: Path, key: str, count: int) -> list[tuple[float, float]] | None:
    """The cached totals, or None where there are none for these pairs and weights."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as cache:
            if (cache.metadata() or {}).get("digest") != key:
                return None
            totals = cache.get_tensor("totals")
    except (OSError, SafetensorError):
        return None  # damaged: scored again, which gives the same numbers
    if tuple(totals.shape) != (count, 2):
        return None
    return [(float(c), float(r)) for c, r in totals.tolist()]


def _write(path: Path, key: str, totals: list[tuple[float, float]]) -> None:
    """Written beside and renamed, so a crash never leaves a half-written cache."""
    import torch
    from safetensors.torch import save_file

    staging = path.with_name(f".{path.name}.tmp")
    tensor = torch.tensor(totals, dtype=torch.float32).reshape(len(totals), 2)
    save_file({"totals": tensor}, str(staging), metadata={"digest": key})
    os.replace(staging, path)

"""The figures every tracker logs, under one set of names (``train/loss``, ``eval/loss``, ...),
so a TensorBoard run and a W&B run of the same training read alike."""

from __future__ import annotations

from engine.core.events import Eval, HardwareSample, Step


def step_scalars(event: Step) -> dict[str, float]:
    values: dict[str, float | None] = {
        "train/loss": event.loss,
        "train/learning_rate": event.learning_rate,
        "train/grad_norm": event.grad_norm,
        "train/tokens_per_s": event.tokens_per_s,
        "train/samples_per_s": event.samples_per_s,
        "train/epoch": event.epoch,
        "train/trained_tokens": float(event.trained_tokens),
        **{f"train/{key}": value for key, value in event.metrics.items()},
    }
    # A step without a gradient norm (none measured) logs no point rather than a fake zero.
    return {key: float(value) for key, value in values.items() if value is not None}


def eval_scalars(event: Eval) -> dict[str, float]:
    return {"eval/loss": event.loss, "eval/perplexity": event.perplexity}


def hardware_scalars(event: HardwareSample) -> dict[str, float]:
    values: dict[str, float | None] = {
        "hardware/process_rss_mib": event.process_rss_mib,
        "hardware/system_memory_used_pct": event.system_memory_used_pct,
    }
    for gpu in event.gpus:
        values[f"hardware/gpu{gpu.index}_memory_used_mib"] = gpu.memory_used_mib
        values[f"hardware/gpu{gpu.index}_utilization_pct"] = gpu.utilization_pct
        values[f"hardware/gpu{gpu.index}_power_w"] = gpu.power_w
    return {key: float(value) for key, value in values.items() if value is not None}

"""What a tracker may be told about the preset: the resolved config, less anything secret.

Tracker runs are often shared (a W&B project, a TensorBoard folder on a team drive), so keys
that may hold credentials (tokens, webhook URLs, passwords, API keys) never leave the machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.events import HardwareSample, RunStarted

# Whole words of a key (split at "_" and "-"): "hub_token" is a secret, "max_new_tokens" and
# "tokenizer" are not.
SECRET_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "apikey", "webhook", "credentials"}
)


def is_secret_key(key: str) -> bool:
    words = key.lower().replace("-", "_").split("_")
    return bool(SECRET_WORDS.intersection(words)) or ("api" in words and "key" in words)


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every secret-looking key removed, at any depth."""
    return {key: _public(value) for key, value in config.items() if not is_secret_key(str(key))}


def _public(value: Any) -> Any:
    if isinstance(value, dict):
        return public_config(value)
    if isinstance(value, list):
        return [_public(item) for item in value]
    return value


def run_facts(event: RunStarted) -> dict[str, Any]:
    """The run beside its config: what was trained where, in which precision."""
    return {
        "run_name": Path(event.run_dir).name,
        "preset": event.name,
        "task": event.task,
        "model": event.model,
        "device": event.device,
        "precision": event.precision,
        "world_size": event.world_size,
        "total_params": event.total_params,
        "trainable_params": event.trainable_params,
        "total_steps": event.total_steps,
        "global_batch_size": event.global_batch_size,
        "resumed_from_step": event.resumed_from_step,
    }


def hardware_facts(event: HardwareSample) -> dict[str, Any]:
    """The machine's GPUs, once (names and memory); the samples' changing figures are scalars."""
    return {
        "gpu_count": len(event.gpus),
        "gpus": [f"{gpu.name} ({gpu.memory_total_mib:.0f} MiB)" for gpu in event.gpus],
    }


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys (``training.learning_rate``), for trackers whose
    parameter tables are flat."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        else:
            out[name] = value
    return out

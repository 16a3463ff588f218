"""Wrapping a loaded model for its training method: full weights, LoRA, or QLoRA via PEFT."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from engine.core.errors import ConfigError


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None


def prepare_for_training(
    model: Any,
    *,
    method: str,
    lora: LoraSettings,
    gradient_checkpointing: bool,
) -> Any:
    """Return the model to train: the base itself (full) or a PeftModel (lora/qlora)."""
    if gradient_checkpointing:
        enable_transformers_checkpointing(model)
    if method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    # QLoRA: PEFT's prepare_model_for_kbit_training would upcast every non-quantized weight
    # (norms, embeddings, lm_head) to fp32; that costs memory and ran 2-3x slower on an H200.
    # The base stays in its compute dtype; only the adapters train (PEFT keeps them in fp32).
    model.requires_grad_(False)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        bias=lora.bias,
        modules_to_save=lora.modules_to_save,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        names = linear_module_names(model)
        targets = lora.target_modules
        asked = [targets] if isinstance(targets, str) else list(targets)
        close = {m for name in asked for m in difflib.get_close_matches(name, names, n=1)}
        mean = f"Did you mean {', '.join(sorted(close))}? " if close else ""
        known = f", or linear layers of this model: {', '.join(names)}" if names else ""
        raise ConfigError(
            f"lora.target_modules: {exc}", hint=f"{mean}Use all-linear{known}."
        ) from None


def linear_module_names(model: Any) -> list[str]:
    """The names LoRA can target (q_proj, ..., lm_head): the last part of each linear layer's
    path, in model order, once each. Layer numbers ("0", "11") are path parts, never names."""
    import torch

    names: dict[str, None] = {}
    for path, module in model.named_modules():
        leaf = path.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf and not leaf.isdigit():
            names.setdefault(leaf)
    return list(names)


def enable_transformers_checkpointing(model: Any) -> None:
    # Non-reentrant checkpointing works with frozen inputs, so no input-grad hook is needed.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def adapter_input_casts_off(model: Any, amp_dtype: Any) -> Any:
    """Under autocast, stop PEFT from casting each adapter's input to the adapter's fp32.

    PEFT casts x (bf16) to fp32 before every LoRA matmul, and autocast casts it straight back
    to bf16: two activation-sized copies per adapted projection, forward and recompute. The
    forward values are the same (bf16 -> fp32 -> bf16 is exact); only the order in which
    gradients meet changes, within the run-to-run noise of the GPU kernels (bench/RESULTS.md,
    devJ: +16% tokens/s on the 8B LoRA shape). The context must cover the backward pass too,
    so that gradient checkpointing recomputes the same graph it saved.
    """
    import contextlib

    if amp_dtype is None:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)

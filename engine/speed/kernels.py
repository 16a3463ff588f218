"""Fused GPU kernels (Liger: RMSNorm, RoPE, SwiGLU/GeGLU) applied to a loaded model instance.

Liger's fused cross-entropy is not used: engine.speed.loss already never materialises the logits and
is exact. Every kernel used here computes the same function as the module it replaces (within
bf16 rounding); tests/engine/test_gpu.py compares losses against the unfused path on the device.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def apply_fused_kernels(model: Any, *, device: str, requested: bool | None) -> list[str]:
    """Patch the model in place; returns the names of the kernels applied (empty when none)."""
    if requested is False or device != "cuda":
        return []
    if not liger_available():
        if requested:
            from engine.core.errors import ConfigError

            raise ConfigError(
                "training.use_liger_kernel: true, but liger-kernel is not installed.",
                hint="pip install liger-kernel, or set training.use_liger_kernel: false.",
            )
        return []
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model.config.model_type)
    if apply is None:
        return []
    wanted = {
        "rope": True,
        "rms_norm": True,
        "swiglu": True,
        "geglu": True,
        "cross_entropy": False,
        "fused_linear_cross_entropy": False,
    }
    # Each architecture's function takes only the kernels it has (llama swiglu, gemma geglu);
    # given the instance, it patches that model's modules, not just the classes.
    accepted = inspect.signature(apply).parameters
    apply(model=model, **{name: on for name, on in wanted.items() if name in accepted})
    return ["liger:rms_norm", "liger:rope", "liger:swiglu"]

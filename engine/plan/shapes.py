"""Model shapes (the config.json numbers that size a decoder) without importing transformers.

A shape comes from a local directory's config.json, a hub id already in the Hugging Face cache,
or the built-in table below (values copied from each model's real config.json). The parameter
counts are exact for llama-style decoders: llama, mistral, qwen2/3, gemma/gemma2, smollm.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import ConfigError, ModelLoadError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_EXTRA = ("lm_head", "embed_tokens")


@dataclass(frozen=True)
class ModelShape:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool = False  # qwen2, and models with attention_bias
    o_bias: bool = False  # attention_bias also puts a bias on o_proj (not in qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # qwen3, gemma3: an RMSNorm over each head's q and k
    norms_per_layer: int = 2  # gemma2/3 have 4 (pre and post norms)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection in one layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_param_count(self) -> int:
        """Weights of the 7 projections over all layers (no biases, embeddings or lm_head)."""
        return self.num_hidden_layers * sum(a * b for a, b in self.module_dims().values())

    def embedding_param_count(self) -> int:
        return self.vocab_size * self.hidden_size

    def param_count(self) -> int:
        """Every parameter, counted as ``model.num_parameters()`` does (tied weights once)."""
        h = self.hidden_size
        per_layer = sum(a * b for a, b in self.module_dims().values())
        per_layer += self.norms_per_layer * h
        if self.qkv_bias:
            per_layer += self.q_dim + 2 * self.kv_dim
        if self.o_bias:
            per_layer += h
        if self.mlp_bias:
            per_layer += 2 * self.intermediate_size + h
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        total = self.num_hidden_layers * per_layer + h  # + the final norm
        embeddings = self.embedding_param_count()
        return total + (embeddings if self.tie_word_embeddings else 2 * embeddings)

    def flops_per_token(
        self, seq_len: int, *, full: bool, lora_params: int = 0, recompute: bool = False
    ) -> int:
        """Training FLOPs per token (forward + backward, + a recomputed forward if asked).

        Full fine-tuning 6N (Kaplan et al. 2020: forward 2N, backward 4N); a frozen base with
        adapters 4N (input gradients only) + 6 per adapter weight; causal attention adds
        6*L*s*d_q (forward 2, backward 4). N counts matmul weights: projections and lm_head
        (tied or not), not the embedding lookup. Gradient checkpointing adds 2N + 2*L*s*d_q.
        """
        n_mm = self.linear_param_count() + self.vocab_size * self.hidden_size
        attention = 2 * self.num_hidden_layers * seq_len * self.q_dim
        flops = (6 * n_mm if full else 4 * n_mm + 6 * lora_params) + 3 * attention
        return flops + (2 * n_mm + attention if recompute else 0)

    def targeted_modules(self, target_modules: str | list[str] = "all-linear") -> list[str]:
        """Module names LoRA adapts: ``all-linear`` is PEFT's (every projection, not lm_head);
        a list names modules (projections, lm_head, embed_tokens); another string is a regex."""
        known = (*PROJECTIONS, *_EXTRA)
        if target_modules == "all-linear":
            return list(PROJECTIONS)
        if isinstance(target_modules, str):
            names = [name for name in known if re.search(target_modules, name)]
        else:
            names = list(target_modules)
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise ConfigError(
                f"lora.target_modules: no such module in a {self.architecture}: "
                f"{', '.join(unknown) or target_modules}.",
                hint=f"Use all-linear, or some of: {', '.join(known)}.",
            )
        return names

    def trainable_split(
        self, method: str, r: int = 0, target_modules: str | list[str] = "all-linear"
    ) -> tuple[int, int]:
        """(trainable, total) parameters of the model prepared for training, counted as
        engine.models.loading.count_parameters counts them (the one count the wizard, the estimate
        and the run's log show): adapters are trained and add to the total."""
        base = self.param_count()
        if method == "full":
            return base, base
        adapters = self.lora_param_count(r, target_modules)
        return adapters, base + adapters

    def lora_param_count(self, r: int, target_modules: str | list[str] = "all-linear") -> int:
        """LoRA A and B weights: r * (in + out) for each targeted module."""
        dims = self.module_dims()
        extra = {"lm_head": (self.hidden_size, self.vocab_size)}
        extra["embed_tokens"] = (self.vocab_size, self.hidden_size)
        total = 0
        for name in self.targeted_modules(target_modules):
            a, b = dims.get(name) or extra[name]
            total += r * (a + b) * (1 if name in extra else self.num_hidden_layers)
        return total


def _shape(
    arch: str,
    v: int,
    h: int,
    i: int,
    layers: int,
    heads: int,
    kv: int,
    head_dim: int,
    tied: bool,
    **extra: Any,
) -> ModelShape:
    return ModelShape(arch, v, h, i, layers, heads, kv, head_dim, tied, **extra)


# Values from each model's config.json on the hub (instruct variants share the base's shape).
_LLAMA = "LlamaForCausalLM"
_QWEN2, _QWEN3, _GEMMA2 = "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM"
BUILTIN_SHAPES: dict[str, ModelShape] = {
    "llama-3.1-8b": _shape(_LLAMA, 128256, 4096, 14336, 32, 32, 8, 128, False),
    "llama-3.1-70b": _shape(_LLAMA, 128256, 8192, 28672, 80, 64, 8, 128, False),
    "llama-3-8b": _shape(_LLAMA, 128256, 4096, 14336, 32, 32, 8, 128, False),
    "llama-3.2-1b": _shape(_LLAMA, 128256, 2048, 8192, 16, 32, 8, 64, True),
    "llama-3.2-3b": _shape(_LLAMA, 128256, 3072, 8192, 28, 24, 8, 128, True),
    "qwen2.5-0.5b": _shape(_QWEN2, 151936, 896, 4864, 24, 14, 2, 64, True, qkv_bias=True),
    "qwen2.5-1.5b": _shape(_QWEN2, 151936, 1536, 8960, 28, 12, 2, 128, True, qkv_bias=True),
    "qwen2.5-7b": _shape(_QWEN2, 152064, 3584, 18944, 28, 28, 4, 128, False, qkv_bias=True),
    "qwen3-0.6b": _shape(_QWEN3, 151936, 1024, 3072, 28, 16, 8, 128, True, qk_norm=True),
    "qwen3-8b": _shape(_QWEN3, 151936, 4096, 12288, 36, 32, 8, 128, False, qk_norm=True),
    "mistral-7b-v0.3": _shape("MistralForCausalLM", 32768, 4096, 14336, 32, 32, 8, 128, False),
    "gemma-2-2b": _shape(_GEMMA2, 256000, 2304, 9216, 26, 8, 4, 256, True, norms_per_layer=4),
    "gemma-2-9b": _shape(_GEMMA2, 256000, 3584, 14336, 42, 16, 8, 256, True, norms_per_layer=4),
    "smollm2-135m": _shape(_LLAMA, 49152, 576, 1536, 30, 9, 3, 64, True),
    "smollm2-360m": _shape(_LLAMA, 49152, 960, 2560, 32, 15, 5, 64, True),
    "smollm2-1.7b": _shape(_LLAMA, 49152, 2048, 8192, 24, 32, 32, 64, True),
}

# Name parts that don't change the shape: owner prefixes, chat/instruct tags, pre-quantized repos.
_NOISE = {"meta", "instruct", "it", "chat", "base", "bnb", "4bit", "unsloth", "hf", "embedded"}


def table_key(name: str) -> str:
    """``unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit`` -> ``llama-3.1-8b``."""
    stem = name.strip().rstrip("/").split("/")[-1].split(":")[-1].lower()
    stem = re.sub(r"\.gguf$", "", stem)
    stem = re.sub(r"[.-](q\d\w*|f16|bf16|f32)$", "", stem)  # GGUF quant suffixes
    return "-".join(part for part in stem.split("-") if part and part not in _NOISE)


def shape_from_config(config: dict[str, Any], source: str = "config.json") -> ModelShape:
    """A shape from the parsed config.json of a llama-style decoder."""
    config = config.get("text_config") or config
    model_type = str(config.get("model_type", ""))
    if any(key in config for key in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise ModelLoadError(
            f"{source}: {model_type or 'this model'} is a mixture-of-experts model; "
            "the estimator only sizes dense decoders.",
            hint="Measure it instead with a short run: --set training.max_steps=5.",
        )
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        tied_default = model_type.startswith("gemma")  # transformers' per-model default
        architectures = config.get("architectures") or [model_type or "unknown"]
        return ModelShape(
            architecture=str(architectures[0]),
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", tied_default)),
            qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
            o_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=model_type in ("qwen3", "gemma3", "gemma3_text"),
            norms_per_layer=4 if model_type.startswith(("gemma2", "gemma3")) else 2,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{source}: not a llama-style decoder config (missing or bad {exc}).",
            hint="The estimator needs hidden_size, intermediate_size, num_hidden_layers, "
            "num_attention_heads and vocab_size.",
        ) from None


def _read_config(path: Path) -> ModelShape:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot be read as JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object.")
    return shape_from_config(data, source=str(path))


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"


def cached_config(hub_id: str) -> Path | None:
    """The newest cached config.json of a hub id, if the hub cache holds one."""
    folder = hub_cache_dir() / ("models--" + hub_id.strip("/").replace("/", "--"))
    found = sorted(folder.glob("snapshots/*/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def shape_for(name_or_path: str) -> ModelShape:
    """The shape of a model, read offline: local config.json, hub cache, then the built-in table."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return _read_config(path / "config.json")
        raise ModelLoadError(
            f"{name_or_path}: no config.json in this directory.",
            hint="Point model.name_or_path at a Hugging Face model directory.",
        )
    if "/" in name_or_path and not path.exists() and name_or_path.count("/") == 1:
        cached = cached_config(name_or_path)
        if cached is not None:
            return _read_config(cached)
    shape = BUILTIN_SHAPES.get(table_key(name_or_path))
    if shape is not None:
        return shape
    raise ModelLoadError(
        f"The shape of '{name_or_path}' is unknown offline (not a local directory, not in the "
        "Hugging Face cache, not in finetty's table).",
        hint="Download its config.json (hf download ID config.json) or pass a local "
        "model directory as model.name_or_path.",
    )

"""HF safetensors folder → GGUF (F16, BF16, Q8_0) with the ``gguf`` package, no llama.cpp needed.

Two passes: ``plan_gguf`` reads only config, tokenizer and safetensors headers, maps every tensor
name and fails on anything unsupported before a byte is written; ``write_gguf`` then streams one
tensor at a time (memory stays at one tensor, not the model). Tensor layouts follow llama.cpp's
``convert_hf_to_gguf.py``: q/k rows permuted for llama-style RoPE, Gemma norms stored as 1 + w.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.export.files import ExportError, Progress, human_size, no_progress

# HF model_type → (GGUF architecture, permute q/k for llama.cpp's RoPE, Gemma's 1 + w norms)
ARCHITECTURES: dict[str, tuple[str, bool, bool]] = {
    "llama": ("llama", True, False),
    "mistral": ("llama", True, False),
    "qwen2": ("qwen2", False, False),
    "qwen3": ("qwen3", False, False),
    "gemma": ("gemma", False, True),
    "gemma2": ("gemma2", False, True),
}
GGUF_TYPES = ("f16", "bf16", "q8_0")
_SKIPPED = re.compile(r"rotary_emb\.inv_freq$|\.attention\.masked_bias$")


@dataclass
class GgufPlan:
    model_dir: Path
    config: dict[str, Any]
    arch: str
    permute: bool
    norm_shift: bool
    tensors: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)  # hf, gguf, shape
    pre: str | None = None  # gpt2-BPE pre-tokenizer name, None for SentencePiece-style vocabularies

    @property
    def n_params(self) -> int:
        return sum(math.prod(shape) for _, _, shape in self.tensors)


def check_architecture(config: dict[str, Any]) -> str:
    model_type = str(config.get("model_type", "?"))
    if model_type not in ARCHITECTURES:
        raise ExportError(
            f"GGUF export does not support the '{model_type}' architecture "
            f"({', '.join(config.get('architectures') or [model_type])}).",
            hint=f"Supported: {', '.join(ARCHITECTURES)}. Export --format merged and convert it "
            "with llama.cpp's convert_hf_to_gguf.py instead.",
        )
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", "llama3", "linear"):
        raise ExportError(
            f"GGUF export does not handle RoPE scaling '{rope.get('rope_type')}' yet.",
            hint="Export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py.",
        )
    return model_type


def plan_gguf(model_dir: Path) -> GgufPlan:
    """Check everything that could stop a conversion, without reading any weights."""
    import gguf
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch, permute, shift = ARCHITECTURES[check_architecture(config)]
    plan = GgufPlan(model_dir, config, arch, permute, shift)
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_enum, int(config["num_hidden_layers"]))
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir} has no .safetensors weights to convert.")
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if _SKIPPED.search(name) or (shift and name == "lm_head.weight"):
                    continue
                target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise ExportError(f"No GGUF name for tensor '{name}' ({arch}).")
                shape = tuple(handle.get_slice(name).get_shape())
                plan.tensors.append((name, target, shape))
    plan.pre = vocab_kind(model_dir)
    return plan


def write_gguf(
    plan: GgufPlan, out_path: Path, qtype: str, *, name: str, progress: Progress = no_progress
) -> None:
    """Write the planned model as one GGUF file of ``qtype`` (f16, bf16 or q8_0)."""
    import gguf
    import torch
    from safetensors import safe_open

    config, target_type = plan.config, _QTYPES()[qtype]
    writer = gguf.GGUFWriter(out_path, plan.arch)
    _add_metadata(writer, plan, name, qtype)
    progress("GGUF: tokenizer", None)
    _add_vocab(writer, plan)
    extra = _rope_freqs(config)
    tensors = [(t, s) for _, t, s in plan.tensors] + (
        [("rope_freqs.weight", extra.shape)] if extra is not None else []
    )
    kinds, sizes = {}, {}
    for target, shape in tensors:
        kind = _storage_type(target, shape, target_type)
        kinds[target] = kind
        byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, kind) if _is_raw(kind) else shape
        itemsize = {gguf.GGMLQuantizationType.F32: 4, gguf.GGMLQuantizationType.F16: 2}.get(kind, 1)
        dtype = {4: np.float32, 2: np.float16}.get(itemsize, np.uint8)
        sizes[target] = math.prod(byte_shape) * itemsize
        writer.add_tensor_info(
            target,
            byte_shape,
            np.dtype(dtype),
            sizes[target],
            raw_dtype=kind if _is_raw(kind) else None,
        )
    writer.write_header_to_file(out_path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    heads, kv_heads = (
        config["num_attention_heads"],
        config.get("num_key_value_heads") or config["num_attention_heads"],
    )
    handles = {
        f: safe_open(f, framework="pt") for f in sorted(plan.model_dir.glob("*.safetensors"))
    }
    where = {n: f for f, h in handles.items() for n in h.keys()}  # noqa: SIM118
    total, written = sum(sizes.values()), 0
    for index, (hf_name, target, _) in enumerate(plan.tensors):
        data = handles[where[hf_name]].get_tensor(hf_name).to(torch.float32)
        if plan.permute and target.endswith("attn_q.weight"):
            data = _permute(data, heads)
        elif plan.permute and target.endswith("attn_k.weight"):
            data = _permute(data, kv_heads)
        if plan.norm_shift and hf_name.endswith("norm.weight"):
            data = data + 1
        writer.write_tensor_data(gguf.quants.quantize(data.numpy(), kinds[target]))
        written += sizes[target]
        progress(
            f"GGUF {qtype}: tensor {index + 1}/{len(plan.tensors)}, "
            f"{human_size(written)} of {human_size(total)} written",
            written / total,
        )
    if extra is not None:
        writer.write_tensor_data(extra)
    writer.close()


def _QTYPES() -> dict[str, Any]:
    import gguf

    t = gguf.GGMLQuantizationType
    return {"f16": t.F16, "bf16": t.BF16, "q8_0": t.Q8_0}


def _is_raw(kind: Any) -> bool:
    import gguf

    return kind not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)


def _storage_type(target: str, shape: tuple[int, ...], wanted: Any) -> Any:
    """Like llama.cpp: vectors stay F32; rows that don't fill whole Q8_0 blocks fall back to F16."""
    import gguf

    t = gguf.GGMLQuantizationType
    if len(shape) < 2 or target.startswith("rope_freqs"):
        return t.F32
    if wanted == t.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[t.Q8_0][0]:
        return t.F16
    return wanted


def _permute(weights: Any, n_head: int) -> Any:
    """HF's rotate-half q/k rows → llama.cpp's interleaved RoPE layout (convert_hf_to_gguf.py)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    rope = dict(config.get("rope_scaling") or {})
    rope.update(config.get("rope_parameters") or {})
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope["type"]
    return rope


def _rope_freqs(config: dict[str, Any]) -> np.ndarray | None:
    """Llama 3.1's frequency-dependent RoPE scaling, stored as a factor tensor (as llama.cpp does)."""
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    base = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor, low, high = (
        rope.get("factor", 8.0),
        rope.get("low_freq_factor", 1.0),
        rope.get("high_freq_factor", 4.0),
    )
    old = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def display_name(name: str, arch: str) -> str:
    """``general.name`` for a run: its name, unless that would steer a reader to another model.

    transformers reads a llama-arch GGUF named "mistral" as model_type mistral and then cannot
    load it (no GGUF mistral reader); some readers match the substring. llama.cpp stores Mistral
    as llama, so on that architecture a name mentioning "mistral" (any case) is replaced by a
    neutral one; the run name stays in ``general.finetune``.
    """
    if arch == "llama" and "mistral" in name.lower():
        return f"finetty fine-tune ({arch})"
    return name


def _add_metadata(writer: Any, plan: GgufPlan, name: str, qtype: str) -> None:
    import gguf

    c = plan.config
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(display_name(name, plan.arch))
    writer.add_finetune(name)  # the run name, always, where no reader looks for an architecture
    writer.add_context_length(c.get("max_position_embeddings", 4096))
    writer.add_embedding_length(c["hidden_size"])
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(c.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(c.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(c["vocab_size"])
    rope = _rope(c)
    writer.add_rope_freq_base(float(rope.get("rope_theta", c.get("rope_theta", 10000.0))))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if plan.arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if plan.arch != "llama" or head_dim != c["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if plan.arch == "gemma2":
        writer.add_attn_logit_softcapping(c.get("attn_logit_softcapping") or 50.0)
        writer.add_final_logit_softcapping(c.get("final_logit_softcapping") or 30.0)
        writer.add_sliding_window(c.get("sliding_window") or 4096)
    ftype = gguf.LlamaFileType
    writer.add_file_type(
        {"f16": ftype.MOSTLY_F16, "bf16": ftype.MOSTLY_BF16, "q8_0": ftype.MOSTLY_Q8_0}[qtype]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def vocab_kind(model_dir: Path) -> str | None:
    """The llama.cpp pre-tokenizer name for a gpt2-style BPE vocabulary; None for SentencePiece-style."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(
            f"{model_dir} has no tokenizer.json (a fast tokenizer is needed for GGUF)."
        )
    tj = json.loads(path.read_text(encoding="utf-8"))
    if tj["model"]["type"] == "BPE" and tj["model"].get("byte_fallback"):
        return None
    pre = tj.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    kinds = [p.get("type") for p in parts]
    regexes = [p.get("pattern", {}).get("Regex", "") for p in parts if p.get("type") == "Split"]
    if kinds == ["ByteLevel"]:
        return "gpt-2"  # llama.cpp's spelling
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if any("\\p{N}{1,3}" in r for r in regexes):
        return "llama-bpe"
    if any("\\p{N}|" in r and r.startswith("(?i:'s|'t") for r in regexes):
        return "qwen2"
    raise ExportError(
        f"GGUF export does not recognise this tokenizer's pre-tokenizer ({', '.join(map(str, kinds))}).",
        hint="Export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py.",
    )


def _add_vocab(writer: Any, plan: GgufPlan) -> None:
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.model_dir)
    vocab = tokenizer.get_vocab()
    reverse = {i: t for t, i in vocab.items()}
    decoder = tokenizer.added_tokens_decoder
    specials = set(tokenizer.all_special_ids)
    tt = gguf.TokenType
    tokens, types, scores = [], [], []
    for i in range(max(plan.config["vocab_size"], len(vocab))):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(tt.UNUSED)
        elif i in decoder:
            tokens.append(token)
            types.append(tt.CONTROL if decoder[i].special or i in specials else tt.USER_DEFINED)
        elif plan.pre is None and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            tokens.append(token)
            types.append(tt.BYTE)
        else:
            tokens.append(token)
            types.append(tt.CONTROL if i in specials else tt.NORMAL)
        # SentencePiece-style BPE merges pieces by score; rank order reproduces that.
        scores.append(0.0 if types[-1] != tt.NORMAL else -float(i))
    if plan.pre is None:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(plan.pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(
        plan.model_dir, load_merges=plan.pre is not None, n_vocab=len(tokens)
    )
    special.chat_template = None  # added below from the tokenizer, wherever it keeps it
    special.add_to_gguf(writer, quiet=True)
    template = tokenizer.chat_template
    if isinstance(template, str) and template.strip():
        writer.add_chat_template(template)

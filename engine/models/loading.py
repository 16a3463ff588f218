"""Loading a base model and tokenizer, and wrapping it for full, LoRA or QLoRA training.

Sources: a hub id (cached in HF_HOME), a local HF directory, a local .gguf file, or an embedded
model. Everything here takes plain arguments, or the loader's part of a preset as
engine.config.derived.model_load gives it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config.derived import ModelLoad, compute_dtype
from engine.core.errors import ModelLoadError
from engine.models import embedded, weight_files

DATASET_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".arrow")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "embedded", "local", "gguf" or "hub"
    location: str  # directory, hub id, or the folder holding the gguf
    gguf_file: str | None = None

    @property
    def display(self) -> str:
        return f"{self.location}/{self.gguf_file}" if self.gguf_file else self.location


def resolve_source(name_or_path: str, *, allow_pickle: bool = False) -> ModelSource:
    """Say what kind of model this is, and fail early on paths that cannot be a model."""
    if embedded.is_embedded(name_or_path):
        name = embedded.embedded_name(name_or_path)
        embedded.embedded_gguf_path(name)  # fails clearly if the package is missing
        return ModelSource("embedded", name)
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(
                f"GGUF file not found: {name_or_path}", hint="Check the path (model.name_or_path)."
            )
        return ModelSource("gguf", str(path.parent), path.name)
    if path.exists():
        if path.is_file():
            what = "a dataset file" if path.suffix.lower() in DATASET_SUFFIXES else "a file"
            raise ModelLoadError(
                f"model.name_or_path '{name_or_path}' is {what}, not a model directory.",
                hint="Point model.name_or_path at a folder with config.json, a .gguf file, or a hub id; "
                "datasets go in dataset.path.",
            )
        _check_local_dir(path, allow_pickle)
        return ModelSource("local", str(path))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(
            f"Model folder not found: {name_or_path}", hint="Check model.name_or_path."
        )
    return ModelSource("hub", name_or_path)


def _check_local_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        hint = "A model folder holds config.json and weights (save_pretrained writes them)."
        if any(path.glob("*.jsonl")) or any(path.glob("*.parquet")):
            hint = "This looks like a dataset folder; datasets go in dataset.path."
        raise ModelLoadError(
            f"{path} has no config.json, so it is not a Hugging Face model folder.", hint=hint
        )
    has_safetensors = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_safetensors and has_pickle and not allow_pickle:
        raise ModelLoadError(
            f"{path} holds only pickle (.bin) weights, which can run code when loaded.",
            hint="Convert them to safetensors, or set model.allow_pickle_weights: true if you trust the source.",
        )


def select_device(use_cpu: bool) -> str:
    # Set before the first CUDA allocation: variable-length batches fragment the default
    # allocator's segments (reserved memory ran to 2x allocated on an H200).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    if not use_cpu and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def select_dtype(requested: str, device: str):
    """model.dtype as a torch dtype on ``device`` (engine.config.derived.compute_dtype)."""
    import torch

    def native_bf16() -> bool:
        # Without including_emulation=False a T4 or V100 says yes (bf16 tensors can be made
        # there), and would then train in emulated bf16 instead of fp16 on its tensor cores.
        return torch.cuda.is_bf16_supported(including_emulation=False)

    return getattr(torch, compute_dtype(requested, cuda=device == "cuda", bf16=native_bf16))


def select_attention(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device == "cuda":
        import importlib.util

        import torch

        major, _ = torch.cuda.get_device_capability()
        if major >= 8 and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    info: dict[str, Any]


def load_tokenizer(
    source: ModelSource, *, revision: str | None = None, trust_remote_code: bool = False
):
    from transformers import AutoTokenizer

    location, kwargs = from_pretrained_args(source, revision, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as exc:  # noqa: BLE001 - wrapped with the source named
        raise _load_error("tokenizer", source, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: ModelSource,
    *,
    device: str,
    dtype: Any,
    attention: str,
    quant_bits: int | None = None,
    quant_type: str = "nf4",
    double_quant: bool = True,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: weight_files.Report | None = None,
) -> LoadedModel:
    """``progress``: told the bytes of a local model's weights read so far (see weight_files)."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    tokenizer = load_tokenizer(source, revision=revision, trust_remote_code=trust_remote_code)
    location, kwargs = from_pretrained_args(source, revision, trust_remote_code)
    if progress is not None and source.kind != "gguf":
        read_weights_ahead(Path(location), progress)
    kwargs.update(dtype=dtype, attn_implementation=attention)
    if not allow_pickle:
        kwargs["use_safetensors"] = source.kind != "gguf"
    if quant_bits:
        kwargs["quantization_config"] = _bnb_config(quant_bits, quant_type, double_quant, dtype)
        import torch

        kwargs["device_map"] = {"": torch.cuda.current_device()}  # this rank's GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _load_error("model", source, exc) from None
    if not quant_bits:
        model.to(device)
    model.config.use_cache = False
    info = {
        "name": source.display,
        "kind": source.kind,
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "attention": attention,
        "quantization": f"{quant_bits}-bit {quant_type if quant_bits == 4 else 'int8'}"
        if quant_bits
        else "none",
    }
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, info=info)


def resolve_load(load: ModelLoad) -> ModelSource:
    """resolve_source of a preset's base model (engine.config.derived.model_load)."""
    return resolve_source(load.name_or_path, allow_pickle=load.allow_pickle)


def load_model_for(
    load: ModelLoad,
    source: ModelSource,
    *,
    device: str,
    dtype: Any,
    attention: str,
    progress: weight_files.Report | None = None,
) -> LoadedModel:
    """load_model with a preset's loader arguments; ``source`` from resolve_load, ``attention``
    from select_attention (or fixed by the caller)."""
    return load_model(
        source,
        device=device,
        dtype=dtype,
        attention=attention,
        quant_bits=load.quant_bits,
        quant_type=load.quant_type,
        double_quant=load.double_quant,
        revision=load.revision,
        trust_remote_code=load.trust_remote_code,
        allow_pickle=load.allow_pickle,
        progress=progress,
    )


def read_weights_ahead(folder: Path, progress: weight_files.Report) -> None:
    """Read a local folder's safetensors once with a byte count, where they fit in the page
    cache (a hub id, a GGUF file and pickle weights are left to the loader)."""
    files = weight_files.weight_files(folder)
    if files and weight_files.fits_in_page_cache(sum(p.stat().st_size for p in files)):
        weight_files.read_ahead(files, progress)


def _quiet_transformers() -> None:
    # The engine never writes to the terminal: loading bars would tear the TUI and the live view.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def from_pretrained_args(
    source: ModelSource, revision: str | None, trust_remote_code: bool
) -> tuple[str, dict[str, Any]]:
    """Where from_pretrained reads ``source`` from, and the keyword arguments it needs there."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.kind == "embedded":
        return str(embedded.ensure_converted(source.location)), kwargs
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.gguf_file
    if source.kind == "hub" and revision:
        kwargs["revision"] = revision
    return source.location, kwargs


def _bnb_config(bits: int, quant_type: str, double_quant: bool, dtype: Any):
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def _load_error(what: str, source: ModelSource, exc: Exception) -> ModelLoadError:
    from engine.core.errors import weights_only_refusal

    refused = weights_only_refusal(exc)
    if refused is not None:
        # torch's own text advises weights_only=False, which would run the pickle's code.
        return ModelLoadError(
            f"Cannot load the {what} from '{source.display}': its pickle (.bin/.pt) weights "
            f"file {refused} (even with model.allow_pickle_weights: true).",
            hint="Use a copy of the model saved as safetensors, or convert these weights to "
            "safetensors on a machine you trust (load them there, then save_pretrained).",
        )
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if source.kind == "hub":
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set and the model is not in the HF_HOME cache; download it on a machine "
            "with network, or point model.name_or_path at a local folder."
            if offline
            else "Check the hub id and your network; gated models need `huggingface-cli login` or HF_TOKEN."
        )
    else:
        hint = "Check that the folder or file is a complete model (config.json, tokenizer files, weights)."
    return ModelLoadError(f"Cannot load the {what} from '{source.display}': {text}", hint=hint)


def count_parameters(model: Any) -> tuple[int, int]:
    """(total, trainable), counting each shared (tied) tensor once and 4-bit packed weights at full size."""
    total = trainable = 0
    for param in model.parameters():
        count = param.numel()
        if hasattr(param, "quant_state") and param.quant_state is not None:
            count = (
                param.quant_state.shape.numel()
                if hasattr(param.quant_state, "shape")
                else count * 2
            )
        total += count
        if param.requires_grad:
            trainable += count
    return total, trainable

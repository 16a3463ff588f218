"""Reading a finished run for export, loading its base in 16 bits, and exporting the PEFT adapter."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.config.derived import model_load
from engine.export.files import ExportError, Progress, no_progress, staged
from engine.runs import rundir

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


@dataclass
class RunInfo:
    run_dir: Path
    final: Path
    preset: Any  # engine.config.schema.Preset
    is_adapter: bool

    @property
    def name(self) -> str:
        return self.preset.name


def read_run(ref: str, runs_root: Path | None = None) -> RunInfo:
    """A finished run by path or ``latest``: its validated config and its ``final/`` folder."""
    from engine.config.presets import run_config

    path = Path(ref).expanduser()
    if ref == "latest" or not (path / "config.yaml").is_file():
        path = rundir.resolve_run(ref, runs_root or rundir.runs_root())
    final = path / "final"
    preset = run_config(path)
    if not final.is_dir():
        final = _from_sharded_checkpoint(path, preset)
    return RunInfo(path, final, preset, (final / "adapter_config.json").is_file())


def _from_sharded_checkpoint(path: Path, preset: Any) -> Path:
    """A multi-GPU (FSDP) full fine-tune stopped before final/: merge its newest sharded
    checkpoint into ordinary safetensors beside it, and export that."""
    from engine.runs.checkpoint import complete_checkpoints

    checkpoints = complete_checkpoints(path / "checkpoints")
    if not checkpoints or not (checkpoints[-1] / "sharded").is_dir():
        raise ExportError(
            f"{path} has no final/ model (the run has not finished).",
            hint="Export a finished run, or resume this one with `finetty train --resume`.",
        )
    from engine.parallel.sharded import consolidate

    return consolidate(checkpoints[-1], preset, checkpoints[-1] / "consolidated")


def load_base(info: RunInfo, dtype: Any) -> tuple[Any, Any]:
    """The run's base model unquantized in ``dtype`` on the CPU, with the run's own tokenizer.

    QLoRA runs trained on 4-bit weights; merging into those would bake the quantization error
    into the result, so the base is always reloaded in 16 (or 32) bits here.
    """
    from engine.models import loading

    load = replace(model_load(info.preset), quant_bits=None)  # never the 4-bit base (above)
    loaded = loading.load_model_for(
        load, loading.resolve_load(load), device="cpu", dtype=dtype, attention="sdpa"
    )
    loaded.model.eval()
    return loaded.model, load_run_tokenizer(info)


def load_run_tokenizer(info: RunInfo) -> Any:
    from engine.models import loading

    return loading.load_tokenizer(loading.ModelSource("local", str(info.final)))


def load_with_adapter(info: RunInfo, dtype: Any, adapter_dir: Path | None = None) -> Any:
    """Base + adapter (unmerged) in ``dtype``, through plain ``PeftModel.from_pretrained``."""
    from engine.models.inference import load_adapter

    base, tokenizer = load_base(info, dtype)
    model = load_adapter(base, adapter_dir or info.final)
    model.eval()
    return model, tokenizer


def export_adapter(
    info: RunInfo, target: Path, *, force: bool, progress: Progress = no_progress
) -> str:
    """Copy the adapter and tokenizer (with its chat template) to ``target``; prove it loads."""
    if not info.is_adapter:
        raise ExportError(
            f"{info.run_dir} is a full fine-tune ({info.preset.method}); it has no adapter.",
            hint="Use --format merged or --format gguf for this run.",
        )
    import torch

    with staged(target, directory=True, force=force) as staging:
        progress("adapter: copying", None)
        for item in info.final.iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        (staging / "README.md").write_text(_readme(info), encoding="utf-8")
        progress("adapter: verifying (PeftModel.from_pretrained)", None)
        model, tokenizer = load_with_adapter(info, torch.float32, staging)
        ids = torch.tensor([tokenizer("Hello, how are you?").input_ids])
        with torch.no_grad():
            tuned = model(ids).logits
            with model.disable_adapter():
                plain = model(ids).logits
        if not torch.isfinite(tuned).all():
            from engine.export.files import VerificationError

            raise VerificationError("The exported adapter produces non-finite logits.")
        shift = (tuned - plain).abs().max().item()
        missing = [n for n in _TOKENIZER_FILES[:2] if not (staging / n).is_file()]
        if missing:
            raise ExportError(f"The run's final/ folder lacks {', '.join(missing)}.")
    return f"loads with PeftModel.from_pretrained; changes logits by up to {shift:.3g} vs base"


def _readme(info: RunInfo) -> str:
    base = info.preset.model.name_or_path
    qlora = (
        "\nTrained with QLoRA on a 4-bit base; load the base in 16 bits (or 4 bits) to use it.\n"
        if info.preset.method == "qlora"
        else ""
    )
    return f"""# {info.name}: LoRA adapter

Exported by finetty from `{info.run_dir}`. Base model: `{base}`.
{qlora}
```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("<base model>")
model = PeftModel.from_pretrained(base, "<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")  # includes the chat template
```
"""

"""The adapter merged into a 16-bit copy of the base, saved as a plain transformers model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.export.adapter import RunInfo, load_run_tokenizer, load_with_adapter
from engine.export.files import Progress, check_disk_space, no_progress, size_progress, staged
from engine.export.native import fault_point
from engine.export.verify import Reference, build_reference, compare, require

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "bfloat16": "bfloat16", "float16": "float16"}
DTYPES["float32"] = DTYPES["fp32"] = "float32"
SHARD_SIZE = "4GB"


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPES[name])


def build_merged(
    info: RunInfo, dtype: Any, progress: Progress = no_progress
) -> tuple[Any, Any, Reference]:
    """(merged model, tokenizer, reference) where the reference is base + adapter, unmerged."""
    progress(f"merged: loading the base in {str(dtype).replace('torch.', '')} on the CPU", None)
    if info.is_adapter:
        model, tokenizer = load_with_adapter(info, dtype)
        progress("merged: reference logits from base + adapter", None)
        reference = build_reference(model, tokenizer)
        progress("merged: merging the adapter", None)
        model = model.merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(info.final, dtype=dtype)
        model.eval()
        tokenizer = load_run_tokenizer(info)
        reference = build_reference(model, tokenizer)
    return model, tokenizer, reference


def export_merged(
    info: RunInfo,
    target: Path,
    *,
    dtype: str,
    force: bool,
    progress: Progress = no_progress,
) -> str:
    """Merge, save as sharded safetensors in ``dtype``, reload with plain transformers, compare."""
    from transformers import AutoModelForCausalLM

    torch_type = torch_dtype(dtype)
    model, tokenizer, reference = build_merged(info, torch_type, progress)
    params = sum(p.numel() for p in model.parameters())
    check_disk_space(target.parent, params * torch_type.itemsize, f"the merged model ({target})")
    with staged(target, directory=True, force=force) as staging:
        progress("merged: saving safetensors", None)
        expected = params * torch_type.itemsize
        with size_progress(staging, expected, progress, "merged: saving safetensors"):
            save_model_folder(model, tokenizer, staging, readme=_readme(info, DTYPES[dtype]))
        fault_point("merged-save")
        del model
        progress("merged: verifying (reload with AutoModelForCausalLM)", None)
        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch_type)
        reloaded.eval()
        what = "merged model vs base + adapter" if info.is_adapter else "saved model vs run"
        described = require(compare(reloaded, reference, what, f"merged-{DTYPES[dtype]}"))
    return described


def save_model_folder(model: Any, tokenizer: Any, folder: Path, *, readme: str) -> None:
    model.config.use_cache = True  # training turned the KV cache off; inference wants it
    model.save_pretrained(folder, max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(readme, encoding="utf-8")


def _readme(info: RunInfo, dtype: str) -> str:
    method = info.preset.method
    note = {
        "qlora": "This run trained a QLoRA adapter on a 4-bit base. The adapter was merged into a "
        f"{dtype} copy of the base loaded unquantized, never into the 4-bit weights, so the "
        "merge adds no quantization error.",
        "lora": f"The LoRA adapter was merged into the base weights in {dtype}.",
        "full": f"A full fine-tune, saved in {dtype}.",
    }[method]
    return f"""# {info.name} ({dtype})

Exported by finetty from `{info.run_dir}`. Base model: `{info.preset.model.name_or_path}`.

{note}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")  # includes the chat template
```
"""

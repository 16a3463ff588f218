"""Loading a finished run (base + adapter, or a full model) or any model for chat."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import models, rundir
from engine.errors import RunDirError


@dataclass
class ChatModel:
    model: Any
    tokenizer: Any
    chat_template: str | None
    description: str


def load_chat_model(
    target: str, *, adapter: str | None = None, runs_root: Path | None = None
) -> ChatModel:
    path = Path(target).expanduser()
    if target == "latest" or (path / "events.jsonl").is_file():
        return _load_run(rundir.resolve_run(target, runs_root or rundir.runs_root()))
    source = models.resolve_source(target)
    device = models.select_device(use_cpu=False)
    loaded = models.load_model(
        source,
        device=device,
        dtype=models.select_dtype("auto", device),
        attention=models.select_attention("auto", device),
    )
    model = loaded.model
    if adapter:
        model = _with_adapter(model, Path(adapter))
    return ChatModel(model, loaded.tokenizer, loaded.tokenizer.chat_template, source.display)


def _load_run(run_dir: Path) -> ChatModel:
    from engine.presets import run_config

    final = run_dir / "final"
    if not final.is_dir():
        raise RunDirError(
            f"{run_dir} has no final/ model yet (the run has not finished).",
            hint="Wait for the run to finish, or resume it with `finetty train --resume`.",
        )
    preset = run_config(run_dir)
    device = models.select_device(preset.training.use_cpu)
    dtype = models.select_dtype(preset.model.dtype, device)
    attention = models.select_attention(preset.model.attn_implementation, device)
    if (final / "adapter_config.json").is_file():
        source = models.resolve_source(
            preset.model.name_or_path, allow_pickle=preset.model.allow_pickle_weights
        )
        loaded = models.load_model(
            source,
            device=device,
            dtype=dtype,
            attention=attention,
            revision=preset.model.revision,
            trust_remote_code=preset.model.trust_remote_code,
            allow_pickle=preset.model.allow_pickle_weights,
        )
        model = _with_adapter(loaded.model, final)
    else:
        loaded = models.load_model(
            models.ModelSource("local", str(final)), device=device, dtype=dtype, attention=attention
        )
        model = loaded.model
    tokenizer = models.load_tokenizer(models.ModelSource("local", str(final)))
    return ChatModel(model, tokenizer, tokenizer.chat_template, f"{preset.name} ({run_dir})")


def _with_adapter(model: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise RunDirError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json).")
    return PeftModel.from_pretrained(model, str(adapter_dir))

"""Loading a finished run (base + adapter, or a full model) or any model for chat.

A target is checked first, without weights (resolve_chat_target), so both chat front-ends refuse
a bad one before anything slow starts.
"""

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


@dataclass(frozen=True)
class ChatTarget:
    """A checked `finetty chat` target: a run directory, or a model source plus an adapter."""

    run_dir: Path | None = None
    source: models.ModelSource | None = None
    adapter: Path | None = None

    @property
    def description(self) -> str:
        if self.run_dir is not None:
            return str(self.run_dir)
        shown = self.source.display if self.source is not None else "?"
        return f"{shown} + {self.adapter}" if self.adapter else shown


def resolve_chat_target(
    target: str, *, adapter: str | None = None, runs_root: Path | None = None
) -> ChatTarget:
    """Every check that needs no weights, so the REPL and the TUI refuse a bad target alike."""
    path = Path(target).expanduser()
    if target == "latest" or (path / "events.jsonl").is_file():
        run_dir = rundir.resolve_run(target, runs_root or rundir.runs_root())
        if not (run_dir / "final").is_dir():
            raise RunDirError(
                f"{run_dir} has no final/ model yet (the run has not finished).",
                hint="Wait for the run to finish, or resume it with `finetty train --resume`.",
            )
        return ChatTarget(run_dir=run_dir)
    source = models.resolve_source(target)
    adapter_dir = Path(adapter).expanduser() if adapter else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise RunDirError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json).")
    return ChatTarget(source=source, adapter=adapter_dir)


def load_chat_model(
    target: str | ChatTarget, *, adapter: str | None = None, runs_root: Path | None = None
) -> ChatModel:
    if isinstance(target, str):
        target = resolve_chat_target(target, adapter=adapter, runs_root=runs_root)
    if target.run_dir is not None:
        return _load_run(target.run_dir)
    if target.source is None:
        raise RunDirError("Nothing to chat with: the target names neither a run nor a model.")
    source = target.source
    device = models.select_device(use_cpu=False)
    loaded = models.load_model(
        source,
        device=device,
        dtype=models.select_dtype("auto", device),
        attention=models.select_attention("auto", device),
    )
    model = loaded.model
    if target.adapter is not None:
        model = _with_adapter(model, target.adapter)
    return ChatModel(model, loaded.tokenizer, loaded.tokenizer.chat_template, source.display)


def _load_run(run_dir: Path) -> ChatModel:
    from engine.presets import run_config

    final = run_dir / "final"  # resolve_chat_target has checked that it exists
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

    return PeftModel.from_pretrained(model, str(adapter_dir))

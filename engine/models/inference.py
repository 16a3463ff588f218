"""Loading a finished run (base + adapter, or a full model) or any model for chat.

A target is checked first, without weights (resolve_chat_target), so both chat front-ends refuse
a bad one before anything slow starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core import units
from engine.core.errors import ModelLoadError, RunDirError
from engine.models import loading, weight_files
from engine.runs import rundir


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
    source: loading.ModelSource | None = None
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
        if adapter:  # a run brings its own adapter; another one would be silently ignored
            raise RunDirError(
                f"--adapter {adapter} cannot be used with a run ({target}): a run's own adapter "
                "is loaded from its final/ folder.",
                hint="Drop --adapter to chat with the run, or name a base model instead of the "
                "run: finetty chat MODEL --adapter DIR.",
            )
        run_dir = rundir.resolve_run(target, runs_root or rundir.runs_root())
        if not (run_dir / "final").is_dir():
            raise RunDirError(
                f"{run_dir} has no final/ model yet (the run has not finished).",
                hint=rundir.how_to_finish(run_dir),
            )
        return ChatTarget(run_dir=run_dir)
    source = loading.resolve_source(target)
    adapter_dir = Path(adapter).expanduser() if adapter else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        what = "does not exist" if not adapter_dir.exists() else "has no adapter_config.json"
        raise RunDirError(
            f"--adapter {adapter_dir} {what}: it is not a PEFT adapter folder.",
            hint="Give the folder holding adapter_config.json and adapter_model.safetensors "
            "(a run's final/, or an exported adapter/).",
        )
    return ChatTarget(source=source, adapter=adapter_dir)


LoadProgress = Callable[[str], None]  # one line per loading stage


def load_chat_model(
    target: str | ChatTarget,
    *,
    adapter: str | None = None,
    runs_root: Path | None = None,
    progress: LoadProgress | None = None,
) -> ChatModel:
    """Load what ``target`` names; ``progress`` hears each stage (weights with their size)."""
    say = progress or (lambda text: None)
    if isinstance(target, str):
        target = resolve_chat_target(target, adapter=adapter, runs_root=runs_root)
    if target.run_dir is not None:
        return _load_run(target.run_dir, say)
    if target.source is None:
        raise RunDirError("Nothing to chat with: the target names neither a run nor a model.")
    source = target.source
    device = loading.select_device(use_cpu=False)
    say(f"loading {source.display}{_weights_size(source)} on the {device}")
    loaded = loading.load_model(
        source,
        device=device,
        dtype=loading.select_dtype("auto", device),
        attention=loading.select_attention("auto", device),
        progress=weight_bytes(say),
    )
    model = loaded.model
    if target.adapter is not None:
        say(f"loading the adapter {target.adapter}")
        model = _with_adapter(model, target.adapter)
    return ChatModel(model, loaded.tokenizer, loaded.tokenizer.chat_template, source.display)


def _load_run(run_dir: Path, say: LoadProgress) -> ChatModel:
    from engine.config.derived import model_load
    from engine.config.presets import run_config

    final = run_dir / "final"  # resolve_chat_target has checked that it exists
    say(f"reading {run_dir / 'config.yaml'}")
    preset = run_config(run_dir)
    device = loading.select_device(preset.training.use_cpu)
    dtype = loading.select_dtype(preset.model.dtype, device)
    attention = loading.select_attention(preset.model.attn_implementation, device)
    if (final / "adapter_config.json").is_file():
        # The base's source and loader flags as the run read them (engine.config.derived), in
        # the compute dtype: chat needs no 4-bit base, the adapter applies to either.
        load = model_load(preset)
        source = loading.resolve_load(load)
        say(f"loading the base {source.display}{_weights_size(source)} on the {device}")
        loaded = loading.load_model(
            source,
            device=device,
            dtype=dtype,
            attention=attention,
            revision=load.revision,
            trust_remote_code=load.trust_remote_code,
            allow_pickle=load.allow_pickle,
            progress=weight_bytes(say),
        )
        say(f"loading the adapter from {final}")
        model = _with_adapter(loaded.model, final)
    else:
        local = loading.ModelSource("local", str(final))
        say(f"loading the model from {final}{_weights_size(local)} on the {device}")
        loaded = loading.load_model(
            loading.ModelSource("local", str(final)),
            device=device,
            dtype=dtype,
            attention=attention,
            progress=weight_bytes(say),
        )
        model = loaded.model
    say("loading the tokenizer")
    tokenizer = loading.load_tokenizer(loading.ModelSource("local", str(final)))
    return ChatModel(model, tokenizer, tokenizer.chat_template, f"{preset.name} ({run_dir})")


def weight_bytes(say: LoadProgress) -> weight_files.Report:
    """The weight files' bytes read so far, as a loading stage: ``weights 96/256 MiB, ETA 3s``."""

    def report(done: int, total: int, elapsed: float) -> None:
        eta = elapsed / done * (total - done) if done else None
        say(f"weights {done / 2**20:.0f}/{total / 2**20:.0f} MiB, ETA {units.duration(eta)}")

    return report


def _weights_size(source: loading.ModelSource) -> str:
    """`` (270 MiB)`` for a local folder's weights; empty where the size is not known here."""
    folder = Path(source.location)
    if source.kind not in ("local", "embedded") or not folder.is_dir():
        return ""
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return f" ({size / 2**20:.0f} MiB)" if size else ""


def _with_adapter(model: Any, adapter_dir: Path) -> Any:
    return load_adapter(model, adapter_dir)


def load_adapter(model: Any, adapter_dir: Path) -> Any:
    """``PeftModel.from_pretrained``, with a short typed error when the adapter does not fit.

    An adapter whose adapter_config.json was edited (its ``r``, say) no longer matches its
    weights, and PEFT then raises one size-mismatch line per tensor (tens of kilobytes).
    """
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        first = next((line for line in lines if "size mismatch" in line), lines[0] if lines else "")
        more = f" (and {len(lines) - 1} more lines like it)" if len(lines) > 1 else ""
        raise ModelLoadError(
            f"The adapter in {adapter_dir} does not fit the model it is loaded on: "
            f"{first[:300]}{more}.",
            hint="Its adapter_config.json (r, lora_alpha, target_modules) must match the weights "
            "in adapter_model.safetensors and the base model. Was the config edited? Restore it, "
            "or export the adapter again from its run.",
        ) from None

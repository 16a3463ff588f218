"""Conversions both sources share: chat template names, precision flags, numbers and lists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.config.importers.table import Mapping

Handler = Callable[[Mapping, str, Any, dict[str, Any]], None]
"""Maps one key: (mapping, key, value, the whole config, for keys read together)."""

# Source template names onto finetty's named templates (engine/data/templates.py; config/ may
# not import data/, so tests/engine/config/importers checks each target exists there).
CHAT_TEMPLATES = {
    "chatml": "chatml",
    "llama3": "llama-3",
    "mistral": "mistral",
    "mistral_v1": "mistral",
    "gemma": "gemma",
    "phi_3": "phi-3",
    "phi": "phi-3",  # LLaMA-Factory's "phi" is Phi-3's <|user|> ... <|end|> format
    "zephyr": "zephyr",
    "alpaca": "alpaca",
    "tokenizer_default": "model",
    # Families finetty names no template for: their tokenizer's own is the one they trained on
    # (Qwen's is ChatML, auto's fallback; the others have none to fall back to).
    **dict.fromkeys(("qwen", "qwen_25", "qwen3", "qwen3_nothink"), "auto"),
    **dict.fromkeys(("gemma2", "gemma3", "phi_4", "phi4", "llama4"), "model"),
}
FINETTY_TEMPLATES = "chatml, llama-3, mistral, gemma, phi-3, zephyr, alpaca"

# Optimizer names TrainingArguments takes as synonyms of one finetty knows.
OPTIMIZERS = {"adamw_bnb_8bit": "adamw_8bit", "adamw_torch_8bit": "adamw_8bit"}

NO_TRACKER = (
    "W&B's own settings: set them as its environment variables (WANDB_PROJECT, WANDB_ENTITY, "
    "WANDB_MODE, ...) and training.report_to: wandb"
)
ONE_DATASET = (
    "finetty trains on one dataset (the first is imported): merge them into one file or hub "
    "dataset and set dataset.path"
)
OWN_RUN_DIR = "finetty writes each run to runs/<name>/<timestamp>"
OWN_PARALLEL = (
    "finetty picks the execution mode itself: DDP for LoRA/QLoRA, FSDP for full "
    "(training.fsdp); launch with torchrun for several GPUs"
)


def chat_template(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if isinstance(value, str) and value in CHAT_TEMPLATES:
        target = CHAT_TEMPLATES[value]
        notes = {"model": "the model's own chat template", "auto": "the model's own, else ChatML"}
        note = notes.get(target, "")
        mapping.to(key, value, {"dataset.chat_template": target}, note)
    else:
        mapping.unmapped(
            key, value, f"finetty has no such template; its named ones are {FINETTY_TEMPLATES}"
        )


def precision(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    """bf16/fp16/float32 flags: true picks model.dtype; false or auto leaves dtype on auto."""
    dtypes = {"bf16": "bfloat16", "fp16": "float16", "float16": "float16", "float32": "float32"}
    if value is True:
        mapping.to(key, value, {"model.dtype": dtypes[key]})
    elif value in (False, "auto"):
        mapping.same(key, value, "model.dtype: auto picks bfloat16, float16 or float32 per device")
    else:
        mapping.unmapped(key, value, "expected true, false or auto")


def number(value: Any) -> Any:
    """A number YAML 1.1 read as text (``2e-5`` has no dot, so it is a string) as a float."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def names(value: Any) -> list[str] | None:
    """A list of names given as a list or as "a,b,c"; None for anything else."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def optimizer(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    name = OPTIMIZERS.get(value, value) if isinstance(value, str) else value
    note = f"TrainingArguments' {value} is {name}" if name != value else ""
    mapping.to(key, value, {"training.optim": name}, note)


def train_on_all(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    """train_on_inputs / train_on_prompt: true puts the loss on every token."""
    if isinstance(value, bool):
        mapping.to(key, value, {"dataset.train_on": "all" if value else "responses"})
    else:
        mapping.unmapped(key, value, "expected true or false")


def implied_defaults(
    mapping: Mapping, data: dict[str, Any], defaults: dict[str, tuple[Any, str]], note: str
) -> None:
    """The source tool's defaults (key -> (value, finetty key)) for the keys ``data`` leaves
    unset, written out because finetty's own differ."""
    for key, (value, target) in defaults.items():
        if key not in data:
            mapping.implied(key, value, {target: value}, note)


def direct(mapping: Mapping, key: str, value: Any, target: str) -> None:
    """A key with the same meaning under another name; numbers read as text become numbers."""
    if value is None:
        mapping.unmapped(key, value, "")
    else:
        mapping.to(key, value, {target: number(value)})


@dataclass(frozen=True)
class KeyTable:
    """How one source's keys map: a handler, a rename, the same as finetty, or no equivalent."""

    source: str  # the tool's name, for unknown keys
    handlers: dict[str, Handler]
    direct: dict[str, str]  # source key -> finetty key of the same meaning
    same: dict[str, str]  # source key -> why nothing needs writing
    unmapped: dict[str, str]  # source key -> why finetty has no equivalent
    prefixes: dict[str, str] = field(default_factory=dict)  # key prefix -> why no equivalent

    def map(self, data: dict[str, Any]) -> Mapping:
        """One row per key of ``data``, in its order."""
        mapping = Mapping()
        for key, value in data.items():
            key = str(key)
            prefix = next((p for p in self.prefixes if key.startswith(p)), None)
            if key in self.handlers:
                self.handlers[key](mapping, key, value, data)
            elif key in self.direct:
                direct(mapping, key, value, self.direct[key])
            elif key in self.same:
                mapping.same(key, value, self.same[key])
            elif key in self.unmapped:
                mapping.unmapped(key, value, self.unmapped[key])
            elif prefix is not None:
                mapping.unmapped(key, value, self.prefixes[prefix])
            else:
                mapping.unmapped(key, value, f"not a key finetty's {self.source} importer knows")
        return mapping

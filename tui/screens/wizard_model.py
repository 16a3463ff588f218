"""Wizard step 1, the model: what it is, how big, and whether it fits here (no torch, no download)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult

from engine.core.errors import FinettyError
from engine.core.units import count
from tui import wizard_device
from tui.screens.wizard import WizardStep
from tui.wizard_state import WizardState

EXAMPLES = [
    "embedded:smollm2-135m-instruct",
    "unsloth/Meta-Llama-3.1-8B-bnb-4bit",
    "meta-llama/Llama-3.2-1B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "google/gemma-2-9b-it",
]


def model_summary(state: WizardState) -> str:
    """Kind, architecture, parameter count and fit, as markup lines. Reads files; run it off-thread."""
    from engine.models.loading import resolve_source
    from engine.plan.shapes import shape_for

    name = str(state.get("model.name_or_path") or "").strip()
    if not name:
        return "[$foreground-muted]Name a model above.[/]"
    lines = []
    try:
        source = resolve_source(name, allow_pickle=bool(state.get("model.allow_pickle_weights")))
        kind = {
            "embedded": "embedded (ships with finetty, no download)",
            "local": "local folder",
            "gguf": "GGUF file",
            "hub": "Hugging Face hub id",
        }[source.kind]
        if source.kind == "gguf":
            size = (Path(source.location) / str(source.gguf_file)).stat().st_size
            kind += f", {size / 2**30:.2f} GiB on disk"
        lines.append(f"kind    {kind}")
    except FinettyError as exc:
        return f"[$text-error]✗ {exc.message}[/]" + (f"\n  {exc.hint}" if exc.hint else "")
    try:
        shape = shape_for(name)
    except FinettyError as exc:
        lines.append(f"[$text-warning]shape   unknown offline: {exc.hint or exc.message}[/]")
        return "\n".join(lines)
    lines.append(
        f"arch    {shape.architecture}, {shape.num_hidden_layers} layers, "
        f"hidden {shape.hidden_size}, vocab {shape.vocab_size:,}"
    )
    lines.append(f"params  {count(shape.param_count())} ({shape.param_count():,})")
    lines.append(fit_line(state))
    return "\n".join(lines)


def fit_line(state: WizardState) -> str:
    """The fit of the whole config, from the estimate `finetty estimate` prints."""
    from engine.plan.estimate import estimate_for

    try:
        result = estimate_for(state.preset(), wizard_device.device_spec())
    except FinettyError as exc:
        first = getattr(exc, "problems", [exc.message])[0]
        return f"[$text-warning]fit     cannot estimate yet: {first}[/]"
    where = result.device if result.on_gpu else "the CPU (RAM)"
    used = f"{result.memory.total:.1f} of {result.capacity_gib:g} GiB"
    # Which row length the figure assumes, as the estimate's notes say it.
    used += " (rows measured)" if result.lengths == "measured" else " (rows at max_seq_length)"
    if result.fits:
        return f"[$text-success]fit     ✓ fits on {where}: {used}[/]"
    advice = f"; {result.advice[0]}" if result.advice else ""
    return f"[$text-error]fit     ✗ does not fit on {where}: {used}{advice}[/]"


class ModelStep(WizardStep):
    STEP = 0
    KEYS: ClassVar[tuple[str, ...]] = (
        "model.name_or_path",
        "model.dtype",
        "model.load_in_4bit",
        "model.load_in_8bit",
        "model.attn_implementation",
        "model.revision",
        "model.trust_remote_code",
    )

    def compose_body(self) -> ComposeResult:
        yield from self.fields(self.KEYS[:1], **{"model.name_or_path": EXAMPLES})
        yield self.panel("model-info", "About this model")
        yield from self.fields(self.KEYS[1:])

    def on_mount(self) -> None:
        super().on_mount()
        self.refresh_info()

    def field_changed(self, key: str) -> None:
        self.debounce(self.refresh_info)

    def refresh_info(self) -> None:
        self.show("model-info", "[$foreground-muted]reading the model's shape…[/]")
        self.summarise(self.snapshot())

    @work(thread=True, exclusive=True, group="model-info")
    def summarise(self, snapshot: WizardState) -> None:
        self.from_thread(self.show, "model-info", model_summary(snapshot))

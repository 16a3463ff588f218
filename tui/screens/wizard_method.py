"""Wizard step 3, the method: full, LoRA or QLoRA, the LoRA knobs, and the trainable-parameter
count, updated as you type (from the model's shape: no torch)."""

from __future__ import annotations

import math
from typing import ClassVar

from textual import work
from textual.app import ComposeResult

from engine.core.errors import FinettyError
from engine.core.units import count, share
from engine.plan.shapes import ModelShape
from tui.screens.wizard import WizardStep
from tui.wizard_state import WizardState

LORA_KEYS = (
    "lora.r",
    "lora.lora_alpha",
    "lora.lora_dropout",
    "lora.target_modules",
    "lora.use_rslora",
    "lora.use_dora",
    "lora.bias",
)
TARGETS = ["all-linear", "q_proj, k_proj, v_proj, o_proj", "q_proj, v_proj"]


def trainable_summary(state: WizardState, shape: ModelShape) -> str:
    """Trainable parameters of the draft on this shape, with the LoRA scale; markup."""
    method = state.get("method")
    if method == "full":
        total = shape.param_count()
        return f"trainable  {count(total)} of {count(total)} (100%): every weight\n" + (
            "[$foreground-muted]full fine-tuning keeps fp32 Adam states for every weight[/]"
        )
    r, alpha = state.get("lora.r"), state.get("lora.lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        return "[$text-warning]set lora.r to count the adapters[/]"
    try:
        lora, total = shape.trainable_split(
            str(method), r, state.get("lora.target_modules") or "all-linear"
        )
    except FinettyError as exc:
        return f"[$text-error]✗ {exc.message}[/]\n  {exc.hint or ''}"
    lines = [
        f"trainable  {count(lora)} of {count(total)} ({share(lora, total)}), "
        f"r {r} on {', '.join(shape.targeted_modules(state.get('lora.target_modules')))}"
    ]
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        rs = bool(state.get("lora.use_rslora"))
        scale = alpha / (math.sqrt(r) if rs else r)
        how = (
            f"alpha / sqrt(r) = {alpha:g} / {math.sqrt(r):.2f}"
            if rs
            else f"alpha / r = {alpha:g} / {r}"
        )
        lines.append(f"scale      {how} = {scale:.3g}")
    if method == "qlora":
        lines.append("base       4-bit NF4 (model.load_in_4bit: true), CUDA only")
    return "\n".join(lines)


class MethodStep(WizardStep):
    STEP = 2
    KEYS: ClassVar[tuple[str, ...]] = ("method", *LORA_KEYS)
    DEFAULT_CSS = """
    MethodStep.-full .lora-field { display: none; }
    """

    def compose_body(self) -> ComposeResult:
        yield from self.fields(("method",))
        yield self.panel("method-params", "Trainable parameters")
        for field in self.fields(LORA_KEYS, **{"lora.target_modules": TARGETS}):
            field.add_class("lora-field")
            yield field

    def on_mount(self) -> None:
        super().on_mount()
        self.shape: ModelShape | None = None
        self.set_class(self.state.get("method") == "full", "-full")
        self.load_shape(str(self.state.get("model.name_or_path")))

    @work(thread=True, exclusive=True, group="method-shape")
    def load_shape(self, name: str) -> None:
        from engine.plan.shapes import shape_for

        try:
            shape: ModelShape | str = shape_for(name)
        except FinettyError as exc:
            shape = f"[$text-warning]parameter count unknown offline: {exc.message}[/]"
        self.from_thread(self.shape_loaded, shape)

    def shape_loaded(self, shape: ModelShape | str) -> None:
        if isinstance(shape, str):
            self.show("method-params", shape)
            return
        self.shape = shape
        self.update_count()

    def update_count(self) -> None:
        if self.shape is not None:
            self.show("method-params", trainable_summary(self.state, self.shape))

    def field_changed(self, key: str) -> None:
        if key == "method":
            method = self.state.get("method")
            self.set_class(method == "full", "-full")
            # QLoRA is LoRA on a 4-bit base: keep model.load_in_4bit in step with the choice,
            # instead of leaving the user a combination error about another step's key.
            if method == "qlora" and not self.state.get("model.load_in_4bit"):
                self.state.set("model.load_in_4bit", True)
                self.state.set("model.load_in_8bit", False)
                self.notify("model.load_in_4bit set to true (QLoRA trains on a 4-bit base).")
            elif method != "qlora" and self.state.get("model.load_in_4bit"):
                self.state.set("model.load_in_4bit", False)
                self.notify("model.load_in_4bit set to false (only QLoRA uses a 4-bit base).")
            self.revalidate()
        self.update_count()

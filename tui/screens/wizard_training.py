"""Wizard step 4, training: the TrainingArguments-style hyper-parameters, with their defaults."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.widgets import Static

from tui.screens.wizard import WizardStep

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Optimisation", (
        "training.learning_rate",
        "training.lr_scheduler_type",
        "training.warmup_steps",
        "training.warmup_ratio",
        "training.optim",
        "training.weight_decay",
        "training.max_grad_norm",
    )),
    ("Batch and length", (
        "training.per_device_train_batch_size",
        "training.gradient_accumulation_steps",
        "training.num_train_epochs",
        "training.max_steps",
        "training.gradient_checkpointing",
    )),
    ("Logging, evaluation and checkpoints", (
        "training.logging_steps",
        "training.eval_steps",
        "training.save_steps",
        "training.save_total_limit",
        "training.seed",
        "training.use_cpu",
    )),
)  # fmt: skip


class TrainingStep(WizardStep):
    STEP = 3
    KEYS: ClassVar[tuple[str, ...]] = tuple(key for _, keys in GROUPS for key in keys)
    DEFAULT_CSS = """
    TrainingStep .training-group { color: $text-secondary; text-style: bold underline; margin: 1 0; }
    """

    def compose_body(self) -> ComposeResult:
        yield Static("", id="training-batch", classes="wizard-panel")
        for title, keys in GROUPS:
            yield Static(title, classes="training-group")
            yield from self.fields(keys)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#training-batch").border_title = "Global batch"
        self.update_batch()

    def field_changed(self, key: str) -> None:
        self.update_batch()

    def update_batch(self) -> None:
        micro = self.state.get("training.per_device_train_batch_size")
        accum = self.state.get("training.gradient_accumulation_steps")
        if isinstance(accum, int) and (isinstance(micro, int) or micro == "auto"):
            global_batch = micro * accum if isinstance(micro, int) else f"auto x {accum}"
            text = (
                f"{micro} per device x {accum} accumulation = {global_batch} rows per "
                "optimizer step"
            )
        else:
            text = "[$text-warning]fix the batch fields to see the global batch[/]"
        self.show("training-batch", text)

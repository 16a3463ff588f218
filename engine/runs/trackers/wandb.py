"""Weights & Biases through its own library. The library reads its settings from the
environment (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE, WANDB_DIR, WANDB_API_KEY); WANDB_OFFLINE,
which transformers' callback once honoured, means ``WANDB_MODE=offline``. An offline run is
written under ``<WANDB_DIR or the run dir>/wandb/offline-run-*`` for ``wandb sync`` later."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.core.events import Eval, Event, Finished, HardwareSample, RunStarted, Step
from engine.runs.trackers.public_config import hardware_facts, public_config, run_facts
from engine.runs.trackers.scalars import eval_scalars, hardware_scalars, step_scalars

DEFAULT_PROJECT = "finetty"
TRUE_WORDS = ("1", "true", "yes", "on")


def wandb_mode() -> str | None:
    """The mode asked for in the environment; None leaves it to the library (online when
    logged in)."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        return mode
    if os.environ.get("WANDB_OFFLINE", "").strip().lower() in TRUE_WORDS:
        return "offline"
    return None


class WandbTracker:
    name = "wandb"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run: Any = None
        self.step = 0
        self.hardware_logged = False

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._start(event)
        if self.run is None:
            return
        if isinstance(event, Step):
            self.step = event.step
            self.run.log(step_scalars(event), step=event.step)
        elif isinstance(event, Eval):
            # W&B's steps only go forward: an eval at a logged step joins that step's row.
            self.run.log(eval_scalars(event), step=max(event.step, self.step))
        elif isinstance(event, HardwareSample):
            if not self.hardware_logged:
                self.hardware_logged = True
                self.run.config.update({"hardware": hardware_facts(event)}, allow_val_change=True)
            self.run.log(hardware_scalars(event), step=self.step)
        elif isinstance(event, Finished):
            self.run.summary.update({f"final/{key}": value for key, value in event.metrics.items()})

    def _start(self, event: RunStarted) -> None:
        import wandb

        self.step = event.resumed_from_step
        facts = run_facts(event)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=facts["run_name"],
            # WANDB_DIR, when set, is the library's to apply; else the run's files stay with it.
            dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
            mode=wandb_mode(),
            config={**public_config(event.config), "run": facts},
            # Its own Ctrl+C and exit hooks would race the engine's shutdown; the guard closes it.
            settings=wandb.Settings(console="off"),
        )

    def close(self, status: str) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=0 if status != "failed" else 1)

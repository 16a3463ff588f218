"""Weights & Biases through its own library. The library reads its settings from the
environment (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE, WANDB_DIR, WANDB_API_KEY); WANDB_OFFLINE,
which transformers' callback once honoured, means ``WANDB_MODE=offline``. An offline run is
written under ``<WANDB_DIR or the run dir>/wandb/offline-run-*`` for ``wandb sync`` later."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from engine.core.events import Eval, Finished, HardwareSample, RunStarted, Step
from engine.runs.trackers.base import EventTracker
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


def logged_in(wandb: Any) -> bool:
    """Whether W&B has credentials, asked without its interactive prompt: on the engine's
    thread that prompt would wait for a key on a terminal the front-end owns. Releases whose
    login() cannot be asked so are left to prompt as they do."""
    if "prompt" not in inspect.signature(wandb.login).parameters:
        return True
    return bool(wandb.login(prompt=False, verify=False))


class WandbTracker(EventTracker):
    name = "wandb"

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.run: Any = None

    def started(self, event: RunStarted) -> None:
        import wandb

        mode = wandb_mode()
        if mode in (None, "online") and not logged_in(wandb):
            raise RuntimeError(
                "W&B has no login on this machine: run `wandb login` or set WANDB_API_KEY, "
                "or set WANDB_MODE=offline to keep the run for `wandb sync`"
            )
        facts = run_facts(event)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=facts["run_name"],
            # WANDB_DIR, when set, is the library's to apply; else the run's files stay with it.
            dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
            mode=mode,
            config={**public_config(event.config), "run": facts},
            # Its console capture would take the terminal the engine's front-end draws on.
            settings=wandb.Settings(console="off"),
        )

    def logged(self, event: Step) -> None:
        self.run.log(step_scalars(event), step=event.step)

    def evaluated(self, event: Eval) -> None:
        # W&B's steps only go forward: an eval at a logged step joins that step's row.
        self.run.log(eval_scalars(event), step=max(event.step, self.step))

    def sampled(self, event: HardwareSample, *, first: bool) -> None:
        if first:
            self.run.config.update({"hardware": hardware_facts(event)}, allow_val_change=True)
        self.run.log(hardware_scalars(event), step=self.step)

    def finished(self, event: Finished) -> None:
        self.run.summary.update({f"final/{key}": value for key, value in event.metrics.items()})

    def close(self, status: str) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=1 if status == "failed" else 0)

"""TensorBoard: event files under ``<run dir>/tensorboard`` (``tensorboard --logdir`` on it or
on the runs folder), written by torch's SummaryWriter as transformers' TensorBoardCallback does.

The config and the run's facts are text panels; every figure is a scalar at its step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.core.events import Eval, Event, Finished, HardwareSample, RunStarted, Step
from engine.runs.trackers.public_config import hardware_facts, public_config, run_facts
from engine.runs.trackers.scalars import eval_scalars, hardware_scalars, step_scalars

FOLDER = "tensorboard"


def _text(value: Any) -> str:
    # TensorBoard renders text panels as Markdown: an indented block keeps the JSON readable.
    return "\n".join(
        "    " + line for line in json.dumps(value, indent=2, default=str).splitlines()
    )


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        self.log_dir = run_dir / FOLDER
        self.writer: Any = None
        self.step = 0
        self.hardware_logged = False

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._start(event)
        if self.writer is None:
            return
        if isinstance(event, Step):
            self.step = event.step
            self._scalars(step_scalars(event), event.step)
        elif isinstance(event, Eval):
            self._scalars(eval_scalars(event), event.step)
        elif isinstance(event, HardwareSample):
            if not self.hardware_logged:
                self.hardware_logged = True
                self.writer.add_text("hardware", _text(hardware_facts(event)), self.step)
            self._scalars(hardware_scalars(event), self.step)
        elif isinstance(event, Finished):
            finals = {f"final/{key}": value for key, value in event.metrics.items()}
            self._scalars(finals, event.step)

    def _start(self, event: RunStarted) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.step = event.resumed_from_step
        # A resumed run appends a new event file beside the first; TensorBoard reads both.
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("run", _text(run_facts(event)), self.step)
        self.writer.add_text("config", _text(public_config(event.config)), self.step)
        self.writer.flush()

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        # Written now, not every two minutes: a crash must not take the last steps with it, and
        # a write that fails must fail here, where the guard turns it into an alarm.
        self.writer.flush()

    def close(self, status: str) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()

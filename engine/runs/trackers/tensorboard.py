"""TensorBoard: event files under ``<run dir>/tensorboard`` (``tensorboard --logdir`` on it or
on the runs folder), with the scalar and text summaries transformers' TensorBoardCallback writes.

The config and the run's facts are text panels; every figure is a scalar at its step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.core.events import Eval, Finished, HardwareSample, RunStarted, Step
from engine.runs.trackers.base import EventTracker
from engine.runs.trackers.event_file import EventFile
from engine.runs.trackers.public_config import hardware_facts, public_config, run_facts
from engine.runs.trackers.scalars import eval_scalars, hardware_scalars, step_scalars

FOLDER = "tensorboard"


def as_markdown(value: Any) -> str:
    # TensorBoard renders text panels as Markdown: an indented block keeps the JSON readable.
    lines = json.dumps(value, indent=2, default=str).splitlines()
    return "\n".join("    " + line for line in lines)


class TensorBoardTracker(EventTracker):
    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.log_dir = run_dir / FOLDER
        self.writer: EventFile | None = None

    def started(self, event: RunStarted) -> None:
        # A resumed run adds an event file beside the first; TensorBoard reads both.
        self.writer = EventFile(self.log_dir)
        self.writer.text("run", as_markdown(run_facts(event)), self.step)
        self.writer.text("config", as_markdown(public_config(event.config)), self.step)

    def logged(self, event: Step) -> None:
        self._scalars(step_scalars(event), event.step)

    def evaluated(self, event: Eval) -> None:
        self._scalars(eval_scalars(event), event.step)

    def sampled(self, event: HardwareSample, *, first: bool) -> None:
        if first and self.writer is not None:
            self.writer.text("hardware", as_markdown(hardware_facts(event)), self.step)
        self._scalars(hardware_scalars(event), self.step)

    def finished(self, event: Finished) -> None:
        self._scalars({f"final/{key}": value for key, value in event.metrics.items()}, event.step)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None and values:
            self.writer.scalars(values, step)

    def close(self, status: str) -> None:
        self.writer = None  # every record is on disk already: nothing is held open

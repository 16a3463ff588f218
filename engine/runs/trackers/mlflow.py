"""MLflow through its own client. The library reads the server from the environment
(MLFLOW_TRACKING_URI: an http server, a database, or a ``file:`` folder); the experiment is
MLFLOW_EXPERIMENT_NAME, else ``finetty``. The config goes in as parameters (dotted keys, as
MLflow's tables are flat) and whole as ``config.json``; the run's facts as tags."""

from __future__ import annotations

import os
import time
from typing import Any

from engine.core.events import Eval, Finished, HardwareSample, RunStarted, Step
from engine.runs.trackers.base import EventTracker
from engine.runs.trackers.public_config import flat, hardware_facts, public_config, run_facts
from engine.runs.trackers.scalars import eval_scalars, hardware_scalars, step_scalars

DEFAULT_EXPERIMENT = "finetty"
# MLflow's own limits: params per log_batch call, and a parameter value's length.
PARAMS_PER_BATCH = 100
PARAM_LENGTH = 6000
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


class MlflowTracker(EventTracker):
    name = "mlflow"

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self.run_id = ""

    def started(self, event: RunStarted) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient()  # MLFLOW_TRACKING_URI, or the library's default
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        facts = run_facts(event)
        tags = {key: str(value) for key, value in facts.items() if key != "run_name"}
        run = client.create_run(experiment_id, run_name=facts["run_name"], tags=tags)
        self.client, self.run_id = client, run.info.run_id
        config = public_config(event.config)
        params = [Param(key, str(value)[:PARAM_LENGTH]) for key, value in flat(config).items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=params[start : start + PARAMS_PER_BATCH])
        client.log_dict(self.run_id, config, "config.json")

    def logged(self, event: Step) -> None:
        self._metrics(step_scalars(event), event.step)

    def evaluated(self, event: Eval) -> None:
        self._metrics(eval_scalars(event), event.step)

    def sampled(self, event: HardwareSample, *, first: bool) -> None:
        if first:
            for key, value in hardware_facts(event).items():
                self.client.set_tag(self.run_id, f"hardware.{key}", str(value))
        self._metrics(hardware_scalars(event), self.step)

    def finished(self, event: Finished) -> None:
        self._metrics({f"final/{key}": value for key, value in event.metrics.items()}, event.step)

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if not values:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.set_terminated(self.run_id, status=STATUS.get(status, "FINISHED"))

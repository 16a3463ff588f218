"""From ``training.report_to`` to the run's tracker sinks: which library each name needs, the
check that it is installed (before any training), and the guarded sinks themselves."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from engine.core.errors import ConfigError
from engine.core.events import EventSink
from engine.runs.trackers.guard import GuardedTracker, Tracker
from engine.runs.trackers.mlflow import MlflowTracker
from engine.runs.trackers.tensorboard import TensorBoardTracker
from engine.runs.trackers.wandb import WandbTracker

#: report_to name -> (the module it imports, the pip extra that installs it, the tracker).
TRACKERS: dict[str, tuple[str, str, Callable[[Path], Tracker]]] = {
    "tensorboard": ("tensorboard", "tensorboard", TensorBoardTracker),
    "wandb": ("wandb", "wandb", WandbTracker),
    "mlflow": ("mlflow", "mlflow", lambda _run_dir: MlflowTracker()),
}


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(TRACKERS[name][0]) is not None
    except (ImportError, ValueError):  # a broken install: as good as none
        return False


def resolve(report_to: list[str]) -> list[str]:
    """The trackers a run logs to: ``none`` none, ``all`` every one whose library is installed
    (as TrainingArguments does), else the names given."""
    if report_to == ["none"]:
        return []
    if report_to == ["all"]:
        return [name for name in TRACKERS if installed(name)]
    return list(report_to)


def check_installed(report_to: list[str]) -> None:
    """ConfigError naming the extra to install when a tracker's library is missing: found
    before the run directory is made, not after the model has loaded."""
    missing = [name for name in resolve(report_to) if not installed(name)]
    if missing:
        extras = ",".join(TRACKERS[name][1] for name in missing)
        raise ConfigError(
            f"training.report_to asks for {', '.join(missing)}, whose library is not installed.",
            hint=f"Install it with: pip install 'finetty[{extras}]' "
            "(or remove it from training.report_to).",
        )


def tracker_sinks(report_to: list[str], run_dir: Path, report: EventSink) -> list[GuardedTracker]:
    """One guarded sink per tracker; ``report`` receives a failing tracker's alarm."""
    return [GuardedTracker(TRACKERS[name][2](run_dir), report) for name in resolve(report_to)]

"""The event contract between the engine and every front-end (TUI, console, `finetty watch`).

Each event is a frozen dataclass that serialises to one JSON line carrying ``type`` and the schema
version ``v``. Sinks receive events through ``emit``; series events (steps, evals) must never be
dropped, gauge events (hardware samples) may be collapsed by a slow consumer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    #: Gauge events may be collapsed (only the newest matters); series events never.
    gauge: ClassVar[bool] = False
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "v": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False, default=str)


@dataclass(frozen=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    run_dir: str
    name: str
    config: dict[str, Any]
    model: dict[str, Any]  # name, architecture, dtype, device, attention, quantization
    total_params: int
    trainable_params: int
    trainable_percent: float
    total_steps: int
    num_epochs: float
    global_batch_size: int
    resumed_from_step: int = 0
    precision: str = "float32"
    device: str = "cpu"
    pid: int = 0
    world_size: int = 1  # processes (GPUs) training together
    task: str = "SFT"  # what is learned, in words: "SFT", "DPO (sigmoid, beta 0.1)"


@dataclass(frozen=True)
class DatasetStats(Event):
    type: ClassVar[str] = "dataset_stats"
    source: str
    format: str
    rows: int
    train_rows: int
    val_rows: int
    tokens: int
    trained_tokens: int
    max_length: int  # the longest row, in tokens, after truncation
    truncated: int  # rows longer than max_seq_length, cut to it
    mean_length: float
    length_histogram: list[list[int]]
    chat_template: str = ""
    max_seq_length: int = 0  # 0 in events written before it was recorded


@dataclass(frozen=True)
class Step(Event):
    type: ClassVar[str] = "step"
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens_per_s: float
    samples_per_s: float
    step_time_s: float
    tokens: int  # real (non-padding) tokens in this step
    trained_tokens: int
    elapsed_s: float
    eta_s: float | None
    # The task's own metrics beside the loss, averaged over the logged steps (the preference
    # tasks': rewards/margins, rewards/accuracies, logps/chosen, ... under TRL's names); empty
    # for SFT.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Eval(Event):
    type: ClassVar[str] = "eval"
    step: int
    loss: float
    perplexity: float


@dataclass(frozen=True)
class PreferenceAccuracy(Event):
    """The share of held-out pairs whose chosen response the model finds likelier than the
    rejected one (summed response log-probs), before or after preference training."""

    type: ClassVar[str] = "preference_accuracy"
    stage: str  # "before" or "after"
    accuracy: float
    correct: int
    total: int


@dataclass(frozen=True)
class ExactMatch(Event):
    """Exact-match accuracy of greedy answers on the held-out tasks (built-in dataset)."""

    type: ClassVar[str] = "exact_match"
    stage: str  # "before" or "after"
    accuracy: float
    correct: int
    total: int
    by_task: dict[str, list[int]]  # task -> [correct, total]
    examples: list[dict[str, str]]  # a few prompt/expected/got triples


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    memory_used_mib: float
    memory_total_mib: float
    memory_peak_mib: float | None
    utilization_pct: float | None
    temperature_c: float | None
    power_w: float | None


@dataclass(frozen=True)
class HardwareSample(Event):
    type: ClassVar[str] = "hardware"
    gauge: ClassVar[bool] = True
    gpus: list[GpuSample]
    process_rss_mib: float
    process_cpu_pct: float
    system_memory_used_pct: float


@dataclass(frozen=True)
class CheckpointSaved(Event):
    type: ClassVar[str] = "checkpoint_saved"
    step: int
    path: str
    reason: str  # "periodic", "requested", "stop", "final"
    seconds: float


@dataclass(frozen=True)
class LogLine(Event):
    type: ClassVar[str] = "log"
    level: str  # "info", "warning", "error"
    text: str


@dataclass(frozen=True)
class StateChanged(Event):
    type: ClassVar[str] = "state"
    state: str  # "loading", "training", "paused", "stopping", "evaluating", "saving"
    detail: str = ""


@dataclass(frozen=True)
class Alarm(Event):
    """A warning about the run's health (grad-norm spike, rising eval loss, throughput drop)."""

    type: ClassVar[str] = "alarm"
    kind: str
    step: int
    message: str
    remedy: str


@dataclass(frozen=True)
class Progress(Event):
    """How far a long task that is not a training step has got (the exact-match evaluation):
    ``done`` of ``total`` units, with an ETA from the rate so far. Sent about once a second."""

    type: ClassVar[str] = "progress"
    gauge: ClassVar[bool] = True
    task: str  # what is running, e.g. "exact match before training"
    done: float  # may be fractional: examples of a batch part-way through generation
    total: int
    unit: str  # "examples"
    elapsed_s: float
    eta_s: float | None


@dataclass(frozen=True)
class Finished(Event):
    type: ClassVar[str] = "finished"
    status: str  # "finished" or "stopped"
    step: int
    metrics: dict[str, float]
    paths: dict[str, str]
    elapsed_s: float


@dataclass(frozen=True)
class Failed(Event):
    type: ClassVar[str] = "failed"
    kind: str
    title: str
    message: str
    hint: str | None
    step: int
    log_path: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted,
        DatasetStats,
        Step,
        Eval,
        ExactMatch,
        PreferenceAccuracy,
        HardwareSample,
        CheckpointSaved,
        LogLine,
        StateChanged,
        Alarm,
        Progress,
        Finished,
        Failed,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event read from events.jsonl; unknown fields from newer writers are ignored."""
    cls = EVENT_TYPES[data["type"]]
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {key: value for key, value in data.items() if key in names}
    if cls is HardwareSample:
        kwargs["gpus"] = [GpuSample(**gpu) for gpu in kwargs.get("gpus", [])]
    return cls(**kwargs)


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class RecordingSink:
    """Keeps every event in memory, for tests and for late-attaching viewers."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of_type(self, cls: type[Event]) -> list[Any]:
        with self._lock:
            return [event for event in self.events if isinstance(event, cls)]


class FanoutSink:
    """Sends each event to several sinks; a failing sink must not stop training."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = list(sinks)
        # Events come from the engine and the hardware thread; one lock keeps every sink's order the same.
        self._lock = threading.Lock()

    def add(self, sink: EventSink) -> None:
        with self._lock:
            self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        with self._lock:
            for sink in self.sinks:
                # A broken viewer must never kill the run.
                with contextlib.suppress(Exception):
                    sink.emit(event)

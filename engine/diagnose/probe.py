"""The fit probe: a few real optimizer steps at a preset's settings, measured against the estimate.

``finetty train PRESET --probe`` and the review screen's Probe button call ``probe``: it runs the
preset through the real ``Run`` (same model loading, dataset, adapters, kernels, micro-batch and
optimizer) for a few steps, with no exact-match evaluation, no checkpoints and no final save, in
a throwaway run directory, then compares what it measured with ``engine.plan.estimate``:

- peak memory: on a GPU, the peak torch allocated (``max_memory_allocated``), compared with the
  estimate's peak before the CUDA context and allocator slack; on the CPU, the process's peak RSS
  (its high-water mark, reset first where Linux allows), compared with the estimate's total;
- step time and tokens/s: the median of the steps after the first two (the first pays for lazy
  initialisation, the second still for kernel autotuning: on an H200 a probe's steps 2-4 ran up to
  1.42x the full run's step time, steps 3-5 within 0.95-1.24x, bench/RESULTS.md);
- the ETA of the full run from the measured step time and the run's total steps, and its cost at
  an hourly price.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import shutil
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine.config.derived import uses_gpu
from engine.config.schema import Preset
from engine.core.errors import ConfigError, TrainingError
from engine.core.events import DatasetStats, Event, Failed, RunStarted, StateChanged, Step
from engine.core.units import duration
from engine.plan.estimate import CUDA_CONTEXT_GIB, estimate_for
from engine.plan.schedule import run_steps

GIB = 2**30
DEFAULT_STEPS = 5
MAX_STEPS = 20
SUFFIX = "-probe"


@dataclass(frozen=True)
class ProbeResult:
    preset: str
    device: str  # "cpu", or the GPU's name
    on_gpu: bool
    steps: int  # optimizer steps the probe ran
    micro_batch: int
    grad_accum: int
    seq_len: int
    peak_kind: str  # what the peak measures: "torch allocated" (GPU) or "process RSS" (CPU)
    measured_peak_gib: float
    predicted_peak_gib: float  # the estimate of the same quantity
    measured_reserved_gib: float | None  # GPU: torch's reserved peak (what the driver sees)
    capacity_gib: float  # GPU memory, or system RAM
    fits: bool  # the measured footprint (reserved + CUDA context on a GPU) fits the capacity
    measured_step_s: float
    predicted_step_s: float
    tokens_per_s: float
    predicted_tokens_per_s: float
    step_times_s: tuple[float, ...]  # every step, the first included
    total_steps: int | None  # of the full run
    eta_s: float | None  # full run, from the measured step time
    predicted_eta_s: float | None
    hourly_price: float | None
    cost_usd: float | None
    predicted_cost_usd: float | None


class _Watcher:
    """EventSink of the probe run: records what it needs and aborts after the last step."""

    def __init__(self, steps: int, progress: Callable[[str], None] | None) -> None:
        self.steps = steps
        self.progress = progress
        self.control = None  # the run's RunControl, set once the Run exists
        self.started: RunStarted | None = None
        self.dataset: DatasetStats | None = None
        self.step_events: list[Step] = []
        self.failed: Failed | None = None

    def emit(self, event: Event) -> None:
        if isinstance(event, Step):
            self.step_events.append(event)
            self._say(f"step {event.step}/{self.steps}: {event.step_time_s:.2f} s")
            if event.step >= self.steps and self.control is not None:
                # Abort is checked before the next step: no checkpoint, no eval, no final save.
                self.control.abort()
        elif isinstance(event, RunStarted):
            self.started = event
            self._say(f"training {self.steps} steps on {event.device}")
        elif isinstance(event, DatasetStats):
            self.dataset = event
        elif isinstance(event, StateChanged) and event.state == "loading":
            self._say(f"loading {event.detail}")
        elif isinstance(event, Failed):
            self.failed = event

    def _say(self, text: str) -> None:
        if self.progress is not None:
            with contextlib.suppress(Exception):  # a closing UI must not break the probe
                self.progress(text)


class _PeakMemory:
    """Peak memory over the probe: torch's allocator on CUDA, the process's RSS on the CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._hwm_reset = False
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            return
        # Linux resets the RSS high-water mark (VmHWM) on writing 5 to clear_refs; elsewhere,
        # or where it is refused, sample the RSS instead of reporting the lifetime peak.
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._hwm_reset = _vm_hwm() is not None
        except OSError:
            self._hwm_reset = False
        if not self._hwm_reset:
            self._thread = threading.Thread(target=self._sample, name="probe-rss", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.05):
            self._sampled = max(self._sampled, process.memory_info().rss)

    def stop(self) -> tuple[float, float | None]:
        """(peak GiB, reserved peak GiB on CUDA)."""
        if self.cuda:
            import torch

            return (
                torch.cuda.max_memory_allocated() / GIB,
                torch.cuda.max_memory_reserved() / GIB,
            )
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        hwm = _vm_hwm() if self._hwm_reset else None
        if hwm is not None:
            return hwm / GIB, None
        if self._sampled:
            return self._sampled / GIB, None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (GIB if sys.platform == "darwin" else 2**20), None


def _vm_hwm() -> int | None:
    """The process's peak RSS in bytes since the last reset (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def probe_preset(preset: Preset, steps: int) -> Preset:
    """The preset the probe runs: same settings, a few steps, nothing saved or evaluated."""
    from engine.config.presets import validate

    data = preset.model_dump(mode="json")
    data["name"] = preset.name + SUFFIX
    data["training"].update(
        max_steps=steps + 1,  # never reached: the probe aborts after `steps`, so no final save
        save_steps=0,
        eval_steps=None,
        logging_steps=1,
        eval_exact_match=False,
    )
    return validate(data, source=f"{preset.name} (probe)")


def _gpu_for(preset: Preset):
    from engine.plan.gpus import detect_gpus, spec_for

    detected = detect_gpus()
    return spec_for(detected[0]) if uses_gpu(preset, gpu_present=bool(detected)) else None


def _full_run_steps(preset: Preset, stats: DatasetStats | None, micro: int, accum: int, est):
    """Optimizer steps of the real run: max_steps, else the trainer's own count from the rows
    (the estimator's, from the token count, when packing)."""
    training = preset.training
    if training.max_steps <= 0 and (stats is None or preset.dataset.packing):
        return est.total_steps
    return run_steps(
        stats.train_rows if stats is not None else 0,
        micro_batch=micro,
        grad_accum=accum,
        epochs=training.num_train_epochs,
        max_steps=training.max_steps,
    )


def probe(
    preset: Preset,
    steps: int = DEFAULT_STEPS,
    runs_root: Path | str | None = None,
    *,
    hourly_price: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Run ``steps`` real optimizer steps of ``preset`` and measure memory and speed.

    The run goes to ``<runs_root>/<name>-probe/<stamp>/`` (a temporary folder when ``runs_root``
    is None) and is deleted when the probe succeeds; a failed probe keeps it for its log.txt.
    ``progress`` receives short status lines (loading, each step). Raises the run's FinettyError
    (out of memory, bad dataset, ...) if it fails.
    """
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(
            f"--probe-steps {steps}: the probe runs 1 to {MAX_STEPS} steps.",
            hint=f"{DEFAULT_STEPS} steps are enough: the first is discarded as warm-up.",
        )
    from engine.train.run import Run

    temporary = runs_root is None
    root = Path(tempfile.mkdtemp(prefix="finetty-probe-")) if temporary else Path(runs_root)
    gpu = _gpu_for(preset)
    watcher = _Watcher(steps, progress)
    peak = _PeakMemory(cuda=gpu is not None)
    run = Run(probe_preset(preset, steps), watcher, runs_root=root)
    watcher.control = run.control
    peak.start()
    try:
        run.start()
        while run.alive:
            run.join(timeout=0.2)
    except BaseException:  # Ctrl+C: stop the probe's thread before leaving
        run.control.abort()
        run.join(timeout=30)
        raise
    finally:
        measured_peak, reserved = peak.stop()
        run.model = run.tokenizer = None
        gc.collect()
        if gpu is not None:
            import torch

            torch.cuda.empty_cache()
    result = run.result
    if result is not None and result.error is not None:
        raise result.error
    if len(watcher.step_events) < steps or watcher.started is None:
        raise TrainingError(
            f"The probe ran {len(watcher.step_events)} of {steps} steps.",
            hint=f"See {run.run_dir / 'log.txt'}.",
        )
    _discard(run.run_dir, root if temporary else None)

    started, stats = watcher.started, watcher.dataset
    accum = preset.training.gradient_accumulation_steps
    micro = max(1, started.global_batch_size // accum)
    est = estimate_for(preset, gpu, hourly_price)  # the figures `finetty estimate` showed
    timed = watcher.step_events[2:] or watcher.step_events[1:] or watcher.step_events
    step_s = statistics.median(s.step_time_s for s in timed)
    tokens_per_s = statistics.median(s.tokens_per_s for s in timed)
    total = _full_run_steps(preset, stats, micro, accum, est)
    eta = step_s * total if total else None
    predicted_eta = est.step_time_s * total if total else None
    memory = est.memory
    if gpu is not None:
        predicted_peak = memory.total - memory.overhead  # torch's allocations only
        footprint = (reserved or measured_peak) + CUDA_CONTEXT_GIB
    else:
        predicted_peak, footprint = memory.total, measured_peak

    def cost(seconds: float | None) -> float | None:
        if seconds is None or hourly_price is None:
            return None
        return round(seconds / 3600 * hourly_price, 2)

    return ProbeResult(
        preset=preset.name,
        device=gpu.name if gpu is not None else "cpu",
        on_gpu=gpu is not None,
        steps=len(watcher.step_events),
        micro_batch=micro,
        grad_accum=accum,
        seq_len=preset.model.max_seq_length,
        peak_kind="torch allocated" if gpu is not None else "process RSS",
        measured_peak_gib=round(measured_peak, 3),
        predicted_peak_gib=round(predicted_peak, 3),
        measured_reserved_gib=round(reserved, 3) if reserved is not None else None,
        capacity_gib=est.capacity_gib,
        fits=footprint <= est.capacity_gib,
        measured_step_s=round(step_s, 4),
        predicted_step_s=est.step_time_s,
        tokens_per_s=round(tokens_per_s, 1),
        predicted_tokens_per_s=round(est.tokens_per_step / max(est.step_time_s, 1e-9), 1),
        step_times_s=tuple(round(s.step_time_s, 4) for s in watcher.step_events),
        total_steps=total,
        eta_s=round(eta, 1) if eta is not None else None,
        predicted_eta_s=round(predicted_eta, 1) if predicted_eta is not None else None,
        hourly_price=hourly_price,
        cost_usd=cost(eta),
        predicted_cost_usd=cost(predicted_eta),
    )


def _discard(run_dir: Path, temporary_root: Path | None) -> None:
    """Remove the probe's run directory (and its `<name>-probe` folder once empty)."""
    shutil.rmtree(temporary_root or run_dir, ignore_errors=True)
    if temporary_root is None:
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only if no other probe's directory is in it


def _delta(measured: float, predicted: float) -> str:
    if predicted <= 0:
        return ""
    return f"{100 * (measured - predicted) / predicted:+.0f}%"


def format_probe(r: ProbeResult) -> str:
    """Measured against predicted, for a terminal or the review screen (under 72 columns)."""
    where = r.device if r.on_gpu else "the CPU"
    memory_label = "peak (allocated)" if r.on_gpu else "peak (RSS)"
    rows = [
        (memory_label, f"{r.measured_peak_gib:.2f} GiB", f"{r.predicted_peak_gib:.2f} GiB",
         _delta(r.measured_peak_gib, r.predicted_peak_gib)),
        ("step time", f"{r.measured_step_s:.2f} s", f"{r.predicted_step_s:.2f} s",
         _delta(r.measured_step_s, r.predicted_step_s)),
        ("tokens/s", f"{r.tokens_per_s:,.0f}", f"{r.predicted_tokens_per_s:,.0f}",
         _delta(r.tokens_per_s, r.predicted_tokens_per_s)),
    ]  # fmt: skip
    if r.total_steps is not None:
        rows.append(
            (f"ETA, {r.total_steps} steps", duration(r.eta_s), duration(r.predicted_eta_s), "")
        )
    if r.hourly_price is not None and r.cost_usd is not None:
        predicted_cost = f"${r.predicted_cost_usd:.2f}" if r.predicted_cost_usd is not None else "-"
        rows.append((f"cost at ${r.hourly_price:g}/h", f"${r.cost_usd:.2f}", predicted_cost, ""))
    lines = [
        f"Probe of {r.preset}: {r.steps} steps on {where}",
        f"  micro-batch {r.micro_batch} x {r.grad_accum} accum, up to {r.seq_len} tokens",
        f"  {'':<20}{'measured':>12}{'predicted':>12}",
    ]
    lines += [f"  {label:<20}{m:>12}{p:>12}  {d}".rstrip() for label, m, p, d in rows]
    if r.on_gpu and r.measured_reserved_gib is not None:
        lines.append(f"  reserved by torch {r.measured_reserved_gib:.2f} GiB, + CUDA context")
    unit = "GPU" if r.on_gpu else "RAM"
    verdict = "fits" if r.fits else "DOES NOT FIT"
    lines.append(f"  {verdict} in {r.capacity_gib:g} GiB of {unit}")
    lines.append("  step time: median of the steps after the first two")
    return "\n".join(lines)

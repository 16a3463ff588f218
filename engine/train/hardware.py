"""Hardware readings: NVML for GPUs when present, psutil always.

A reading that is not available is None, never an exception (nvitop's habit): a box without a
driver, a GPU that hides its power draw, or a sandbox that forbids a query must not stop a run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psutil

from engine.core.events import EventSink, GpuSample, HardwareSample

MIB = 1024 * 1024


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no GPU readings
        return None


def _maybe(read: Callable[[], float]) -> float | None:
    try:
        return float(read())
    except Exception:  # noqa: BLE001 - any unsupported query reads as "not available"
        return None


class HardwareMonitor:
    """Samples every ``interval`` seconds on a daemon thread and emits HardwareSample events."""

    def __init__(
        self,
        sink: EventSink,
        interval: float = 2.0,
        peak_mib: Callable[[int], float | None] | None = None,
        devices: list[int] | None = None,
    ) -> None:
        self.sink = sink
        self.interval = interval
        self.peak_mib = peak_mib
        # NVML indices to read, in CUDA's order; None reads every GPU. NVML ignores
        # CUDA_VISIBLE_DEVICES, so without this a run with the GPUs hidden showed them anyway.
        self.devices = devices if devices is not None else visible_gpu_indices()
        # Under torch.distributed the trainer gathers every rank's sample itself once training
        # starts, and turns this off so that rank 0 does not publish two views of the job.
        self.publish = True
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # prime: the first call always returns 0
        self._nvml = _nvml()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> HardwareSample:
        memory = self._process.memory_info()
        return HardwareSample(
            gpus=self._gpu_samples(),
            process_rss_mib=memory.rss / MIB,
            process_cpu_pct=self._process.cpu_percent(None),
            system_memory_used_pct=psutil.virtual_memory().percent,
        )

    def _gpu_samples(self) -> list[GpuSample]:
        nvml = self._nvml
        if nvml is None:
            return []
        samples = []
        count = int(_maybe(nvml.nvmlDeviceGetCount) or 0)
        devices = self.devices if self.devices is not None else range(count)
        for ordinal, index in enumerate(devices):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # noqa: BLE001
                continue
            samples.append(
                GpuSample(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_used_mib=info.used / MIB,
                    memory_total_mib=info.total / MIB,
                    # PyTorch numbers the visible GPUs from 0: ask for this one's ordinal.
                    memory_peak_mib=self.peak_mib(ordinal) if self.peak_mib else None,
                    utilization_pct=_maybe(
                        lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu
                    ),
                    temperature_c=_maybe(lambda h=handle: nvml.nvmlDeviceGetTemperature(h, 0)),
                    power_w=_maybe(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                )
            )
        return samples

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="finetty-hardware", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.publish:
                self.sink.emit(self.sample())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)


def cuda_peak_mib(index: int) -> float | None:
    """Peak memory allocated by this process's PyTorch on a GPU."""
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    return torch.cuda.max_memory_allocated(index) / MIB


def visible_gpu_indices() -> list[int] | None:
    """The NVML indices CUDA_VISIBLE_DEVICES lets this process use, in CUDA's order; None when
    it is unset or names GPUs by UUID (every GPU is read then). As in CUDA, the list ends at
    the first entry that is not a GPU index, so "" and "-1" hide every GPU."""
    import os

    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    parts = [part.strip() for part in value.split(",")]
    if any(part.startswith(("GPU-", "MIG-")) for part in parts):
        return None
    visible: list[int] = []
    for part in parts:
        if not part.isdigit():
            break
        visible.append(int(part))
    return visible


def visible_gpu_index(local_rank: int) -> int:
    """The NVML (physical) index of CUDA device ``local_rank`` under CUDA_VISIBLE_DEVICES."""
    import os

    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    if local_rank < len(visible) and visible[local_rank].isdigit():
        return int(visible[local_rank])
    return local_rank


def merge_rank_samples(samples: list[HardwareSample]) -> HardwareSample:
    """One view of a multi-process job: one GPU row per rank (numbered by rank, so rows stay
    apart across nodes), the processes' RAM and CPU summed."""
    from dataclasses import replace

    gpus = [
        replace(gpu, index=rank) for rank, sample in enumerate(samples) for gpu in sample.gpus[:1]
    ]
    return HardwareSample(
        gpus=gpus,
        process_rss_mib=sum(sample.process_rss_mib for sample in samples),
        process_cpu_pct=sum(sample.process_cpu_pct for sample in samples),
        system_memory_used_pct=max(sample.system_memory_used_pct for sample in samples),
    )

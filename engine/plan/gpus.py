"""Known GPUs (memory, bf16, peak dense tensor FLOP/s, bandwidth) and the ones NVML sees here.

Peak TFLOP/s are the datasheet's dense (no sparsity) bf16 figures, fp16 where the card has no
bf16, with fp32 accumulation. Memory is what NVML reports as total, in GiB (a "16 GB" T4 shows
15 GiB), since that is what a run can use. No torch here.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import re
import time
from dataclasses import dataclass

from engine.core.errors import ConfigError


@dataclass(frozen=True)
class GpuSpec:
    key: str
    name: str
    memory_gib: float
    bf16: bool
    tflops: float  # peak dense bf16 (fp16 where no bf16) tensor TFLOP/s
    bandwidth_gbs: float  # memory bandwidth, GB/s
    known: bool = True  # False: built from a detected card the table doesn't list


@dataclass(frozen=True)
class DetectedGpu:
    index: int
    name: str
    memory_gib: float
    driver: str | None = None
    compute_capability: tuple[int, int] | None = None


GPUS: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        GpuSpec("t4", "NVIDIA T4 16GB", 15.0, False, 65, 320),
        GpuSpec("v100-16gb", "NVIDIA V100 16GB", 15.8, False, 125, 900),
        GpuSpec("v100-32gb", "NVIDIA V100 32GB", 31.7, False, 125, 900),
        GpuSpec("l4", "NVIDIA L4 24GB", 22.5, True, 121, 300),
        GpuSpec("a10g", "NVIDIA A10G 24GB", 22.5, True, 70, 600),
        GpuSpec("a10", "NVIDIA A10 24GB", 22.5, True, 125, 600),
        GpuSpec("rtx3090", "GeForce RTX 3090 24GB", 24.0, True, 71, 936),
        GpuSpec("rtx4090", "GeForce RTX 4090 24GB", 24.0, True, 165, 1008),
        GpuSpec("rtx5090", "GeForce RTX 5090 32GB", 31.4, True, 210, 1792),
        GpuSpec("rtx-a6000", "NVIDIA RTX A6000 48GB", 48.0, True, 155, 768),
        GpuSpec("l40s", "NVIDIA L40S 48GB", 45.0, True, 362, 864),
        GpuSpec("a100-40gb", "NVIDIA A100 40GB", 40.0, True, 312, 1555),
        GpuSpec("a100-80gb", "NVIDIA A100 80GB", 80.0, True, 312, 2039),
        GpuSpec("h100-pcie", "NVIDIA H100 PCIe 80GB", 79.6, True, 756, 2000),
        GpuSpec("h100-80gb", "NVIDIA H100 SXM 80GB", 79.6, True, 989, 3350),
        GpuSpec("h200", "NVIDIA H200 141GB", 140.4, True, 989, 4800),
        GpuSpec("b200", "NVIDIA B200 180GB", 179.0, True, 2250, 8000),
    )
}

ALIASES = {
    "tesla-t4": "t4",
    "v100": "v100-16gb",
    "a100": "a100-80gb",
    "a100-40g": "a100-40gb",
    "a100-80g": "a100-80gb",
    "a100-40": "a100-40gb",
    "a100-80": "a100-80gb",
    "h100": "h100-80gb",
    "h100-sxm": "h100-80gb",
    "h100-80g": "h100-80gb",
    "h200-141gb": "h200",
    "3090": "rtx3090",
    "4090": "rtx4090",
    "5090": "rtx5090",
    "rtx-3090": "rtx3090",
    "rtx-4090": "rtx4090",
    "rtx-5090": "rtx5090",
    "a6000": "rtx-a6000",
    "rtxa6000": "rtx-a6000",
}

# Detected NVML names -> table keys, most specific first ("A100-SXM4-40GB", "H100 80GB HBM3").
_DETECTED = (
    (r"\bh100\b.*\bpcie\b", "h100-pcie"),
    (r"\bh100\b", "h100-80gb"),
    (r"\bh200\b", "h200"),
    (r"\bb200\b", "b200"),
    (r"\ba100\b.*\b40gb\b", "a100-40gb"),
    (r"\ba100\b", "a100-80gb"),
    (r"\ba10g\b", "a10g"),
    (r"\ba10\b", "a10"),
    (r"\bl40s\b", "l40s"),
    (r"\bl4\b", "l4"),
    (r"\bt4\b", "t4"),
    (r"\bv100\b.*\b32gb\b", "v100-32gb"),
    (r"\bv100\b", "v100-16gb"),
    (r"\brtx a6000\b", "rtx-a6000"),
    (r"\b3090\b", "rtx3090"),
    (r"\b4090\b", "rtx4090"),
    (r"\b5090\b", "rtx5090"),
)


# Model FLOPs (recompute counted) per peak FLOP on finetty's path: the 8B rows on an H200 (devT,
# engine.plan.estimate.step_time).
GPU_MFU = 0.63
# The CPU demo's training rate as a share of the CPU's float32 matmul rate: SmolLM2-135M LoRA,
# 60 steps of 8 rows padded to 55 tokens on average (0.251 TFLOP a step), trained at 1.38 s a
# step (182 GFLOP/s) on an idle 2-core AMD EPYC whose matmul rate below measured 244-263 GFLOP/s,
# typically 250 (bench/RESULTS.md, 2026-12-04). The same kind of box has been seen at half that
# speed (161 s for those 60 steps on 2026-11-27), so no constant rate can be budgeted on.
CPU_TRAINING_SHARE = 0.73
CPU_FALLBACK_GFLOPS_PER_CORE = 47.0  # where numpy cannot measure: the slower box's rate
MATMUL_PROBE_S = 0.25


def training_flops(gpu: GpuSpec | None) -> tuple[float, float]:
    """(achieved FLOP/s, assumed MFU): peak x MFU on a GPU; on a CPU a share of the matmul rate
    measured here (cpu_matmul_flops)."""
    if gpu is not None:
        return gpu.tflops * 1e12 * GPU_MFU, GPU_MFU
    return cpu_matmul_flops() * CPU_TRAINING_SHARE, CPU_TRAINING_SHARE


def cpu_matmul_flops() -> float:
    """This CPU's float32 matmul rate on every core it may use, in FLOP/s: a quarter-second
    1024x1024 measurement (numpy's BLAS, as fast as torch's here), once per process. A busy
    machine measures slower, as it will also train slower. ``$FINETTY_CPU_GFLOPS`` gives the
    rate instead (the same estimate from every process, e.g. in CI)."""
    given = os.environ.get("FINETTY_CPU_GFLOPS", "")
    with contextlib.suppress(ValueError):
        if 0 < float(given) < 1e6:
            return float(given) * 1e9
    return _measured_matmul_flops()


@functools.cache
def _measured_matmul_flops() -> float:
    try:
        import numpy as np
    except ImportError:
        return cpu_cores() * CPU_FALLBACK_GFLOPS_PER_CORE * 1e9
    n = 1024
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start and page faults
    best = float("inf")
    started = time.perf_counter()
    while time.perf_counter() - started < MATMUL_PROBE_S:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def cpu_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def gpu_spec(name: str) -> GpuSpec:
    """A table GPU by key or alias (``--gpu h100``); ConfigError with suggestions otherwise."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    matched = match_gpu(name)
    if matched is not None:
        return matched
    close = difflib.get_close_matches(key, [*GPUS, *ALIASES], n=3)
    hint = f"Did you mean: {', '.join(close)}? " if close else ""
    raise ConfigError(f"Unknown GPU '{name}'.", hint=hint + f"Known GPUs: {', '.join(GPUS)}.")


def match_gpu(name: str) -> GpuSpec | None:
    """Map a detected name such as 'NVIDIA A100-SXM4-40GB' or 'Tesla T4' to the table."""
    text = re.sub(r"[-_]", " ", name.lower())
    for pattern, key in _DETECTED:
        if re.search(pattern, text):
            return GPUS[key]
    return None


def spec_for(gpu: DetectedGpu) -> GpuSpec:
    """The table entry of a detected GPU with its real memory; a cautious guess if unlisted."""
    matched = match_gpu(gpu.name)
    if matched is not None:
        return GpuSpec(
            matched.key,
            gpu.name,
            gpu.memory_gib,
            matched.bf16,
            matched.tflops,
            matched.bandwidth_gbs,
        )
    major = gpu.compute_capability[0] if gpu.compute_capability else 7
    # Unknown card: assume a mid-range part (~an A10G) so step times err on the slow side.
    return GpuSpec("unknown", gpu.name, gpu.memory_gib, major >= 8, 70, 600, known=False)


def detect_gpus() -> list[DetectedGpu]:
    """GPUs NVML can see, with name, total memory, driver and compute capability; [] if none."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    found: list[DetectedGpu] = []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError:
        driver = None
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
            try:
                capability: tuple[int, int] | None = tuple(  # type: ignore[assignment]
                    pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                )
            except pynvml.NVMLError:
                capability = None
            name = _text(pynvml.nvmlDeviceGetName(handle))
            found.append(DetectedGpu(index, name, round(memory, 1), driver, capability))
    except pynvml.NVMLError:
        pass
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return found


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

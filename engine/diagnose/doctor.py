"""`finetty doctor`: what works on this machine, each problem with a one-line fix.

Every check catches its own failures: a broken install is a "fail" row, never a traceback.
torch and bitsandbytes are imported lazily, inside the checks that need them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from engine.plan.gpus import detect_gpus, spec_for
from engine.plan.shapes import hub_cache_dir

Status = Literal["ok", "warn", "fail", "info"]
MIN_FREE_GIB = 20.0  # an 8B checkpoint, its merged export and a GGUF need about this


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""  # one line; set for every status but ok


def check_gpus() -> list[Check]:
    gpus = detect_gpus()
    if not gpus:
        return [
            Check(
                "gpu",
                "info",
                "no NVIDIA GPU visible (NVML not found): CPU runs only",
                "on a GPU machine, install the NVIDIA driver; `nvidia-smi` should list it",
            )
        ]
    checks = []
    for gpu in gpus:
        spec = spec_for(gpu)
        cc = ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "?"
        detail = (
            f"{gpu.name}, {gpu.memory_gib:g} GiB, driver {gpu.driver or '?'}, "
            f"compute {cc}, {'bf16' if spec.bf16 else 'no bf16 (fp16)'}"
        )
        if spec.known:
            checks.append(Check(f"gpu {gpu.index}", "ok", detail))
        else:
            checks.append(
                Check(
                    f"gpu {gpu.index}",
                    "warn",
                    detail + "; not in finetty's table",
                    "estimates assume ~70 TFLOP/s; times may be off",
                )
            )
    return checks


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is a finding, not a crash
        return [
            Check(
                "torch",
                "fail",
                f"cannot import torch: {exc}",
                "pip install torch (the CUDA build on a GPU machine)",
            )
        ]
    cuda = torch.version.cuda
    detail = f"torch {torch.__version__}, " + (f"CUDA runtime {cuda}" if cuda else "CPU-only build")
    if torch.cuda.is_available():
        return [Check("torch", "ok", detail + f", {torch.cuda.device_count()} device(s) usable")]
    if detect_gpus():
        fix = (
            "install a CUDA build of torch matching the driver"
            if not cuda
            else "the driver is older than this torch's CUDA runtime: update the driver"
        )
        return [Check("torch", "fail", detail + ", but it cannot use the GPU", fix)]
    return [
        Check(
            "torch",
            "info",
            detail + ", no GPU: training runs on the CPU",
            "nothing to do for CPU runs; on a GPU box install a CUDA build of torch",
        )
    ]


def check_bitsandbytes() -> list[Check]:
    if importlib.util.find_spec("bitsandbytes") is None:
        return [
            Check(
                "bitsandbytes",
                "warn",
                "not installed: no QLoRA, no 8-bit optimizers",
                "pip install bitsandbytes",
            )
        ]
    try:
        import torch

        version = importlib.metadata.version("bitsandbytes")
        if not torch.cuda.is_available():  # importing bitsandbytes costs ~6 s: skip it here
            return [
                Check(
                    "bitsandbytes",
                    "info",
                    f"bitsandbytes {version}; no CUDA here, so "
                    "QLoRA and 8-bit optimizers are unavailable",
                    "use method: lora and optim: adamw_torch on the CPU",
                )
            ]
        import bitsandbytes as bnb

        probe = torch.ones(64, device="cuda", dtype=torch.float16)
        packed, state = bnb.functional.quantize_4bit(probe)
        bnb.functional.dequantize_4bit(packed, state)
        return [Check("bitsandbytes", "ok", f"bitsandbytes {version}, CUDA 4-bit kernels work")]
    except Exception as exc:  # noqa: BLE001 - missing CUDA library, ABI mismatch, ...
        return [
            Check(
                "bitsandbytes",
                "fail",
                f"bitsandbytes cannot run: {exc}".splitlines()[0],
                "pip install -U bitsandbytes (a build matching torch's CUDA)",
            )
        ]


def check_optional_kernels() -> list[Check]:
    checks = []
    for module, label, gain, fix in (
        ("flash_attn", "flash-attn", "faster attention", "pip install flash-attn (needs sm80+)"),
        ("liger_kernel", "liger-kernel", "fused loss: less memory", "pip install liger-kernel"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            checks.append(Check(label, "ok", f"installed ({gain})"))
        else:
            checks.append(Check(label, "info", f"not installed (optional: {gain})", fix))
    return checks


def _disk(name: str, path: Path, what: str) -> Check:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # a folder not made yet: measure the disk it will land on
    try:
        free = shutil.disk_usage(probe).free / 2**30
    except OSError as exc:
        return Check(
            name,
            "warn",
            f"{path}: cannot measure ({exc.strerror})",
            f"check that {path} is writable",
        )
    detail = f"{free:.1f} GiB free at {path} ({what})"
    if free < MIN_FREE_GIB:
        return Check(
            name,
            "warn",
            detail,
            f"free space there or move it (an 8B run and its exports need ~{MIN_FREE_GIB:g} GiB)",
        )
    return Check(name, "ok", detail)


def check_disk() -> list[Check]:
    runs = Path(os.environ.get("FINETTY_RUNS") or "runs").expanduser().resolve()
    return [
        _disk("disk: hub cache", hub_cache_dir(), "set HF_HOME to move it"),
        _disk("disk: runs", runs, "set FINETTY_RUNS to move it"),
    ]


def check_hub(timeout: float = 2.0) -> list[Check]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return [
            Check(
                "hub",
                "info",
                "HF_HUB_OFFLINE is set: only cached or local models",
                "unset HF_HUB_OFFLINE to download models and datasets",
            )
        ]
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        request = urllib.request.Request(endpoint, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout):
            pass
        return [Check("hub", "ok", f"{endpoint} reachable")]
    except urllib.error.HTTPError as exc:  # the server answered: reachable
        return [Check("hub", "ok", f"{endpoint} reachable (HTTP {exc.code})")]
    except Exception as exc:  # noqa: BLE001 - DNS, TLS, proxy, timeout: all mean "offline"
        reason = getattr(exc, "reason", exc)
        return [
            Check(
                "hub",
                "warn",
                f"{endpoint} unreachable ({reason})",
                "use local paths or a pre-filled HF_HOME cache, and set HF_HUB_OFFLINE=1",
            )
        ]


def check_llama_cpp() -> list[Check]:
    binary = shutil.which("llama-quantize")
    if binary:
        return [Check("llama.cpp", "ok", f"llama-quantize at {binary} (all GGUF quants)")]
    if importlib.util.find_spec("llama_cpp") is not None:
        return [Check("llama.cpp", "ok", "llama_cpp python package (k-quants via its quantize)")]
    return [
        Check(
            "llama.cpp",
            "info",
            "no llama-quantize: GGUF f16/bf16/q8_0 only, no k-quants",
            "pip install llama-cpp-python, or put llama.cpp's llama-quantize on PATH",
        )
    ]


def check_presets() -> list[Check]:
    """Which bundled and user presets fit the first GPU (or this machine's RAM)."""
    from engine.config.presets import list_presets, load_preset
    from engine.plan.estimate import estimate_for

    gpus = detect_gpus()
    gpu = spec_for(gpus[0]) if gpus else None
    where = gpu.name if gpu else "the CPU (RAM)"
    fits, too_big, unknown, need_cuda = [], [], [], []
    for info in list_presets():
        try:
            preset = load_preset(str(info.path))[0]
            result = estimate_for(preset, gpu)  # what `finetty estimate` says of it
        except Exception:  # noqa: BLE001 - an unreadable preset or unknown shape: say which
            unknown.append(info.name)
            continue
        if gpu is None and preset.hardware_problems(cuda=False):  # 4-bit or 8-bit optimizer
            need_cuda.append(info.name)
        else:
            (fits if result.fits else too_big).append(info.name)
    checks = []
    if need_cuda:
        checks.append(
            Check(
                "presets",
                "info",
                f"need a CUDA GPU: {', '.join(need_cuda)}",
                "run them on a GPU machine (QLoRA and 8-bit optimizers are CUDA-only)",
            )
        )
    if fits:
        checks.append(Check("presets", "ok", f"fit {where}: {', '.join(fits)}"))
    if too_big:
        checks.append(
            Check(
                "presets",
                "info",
                f"too big for {where}: {', '.join(too_big)}",
                "`finetty estimate PRESET` says what would make it fit",
            )
        )
    if unknown:
        checks.append(
            Check(
                "presets",
                "info",
                f"cannot estimate offline: {', '.join(unknown)}",
                "`finetty estimate PRESET` shows why",
            )
        )
    return checks or [Check("presets", "info", "no presets found", "see `finetty presets`")]


CHECKS: tuple[Callable[[], list[Check]], ...] = (
    check_gpus,
    check_torch,
    check_bitsandbytes,
    check_optional_kernels,
    check_disk,
    check_hub,
    check_llama_cpp,
    check_presets,
)


def run_checks() -> list[Check]:
    results: list[Check] = []
    for check in CHECKS:
        try:
            results.extend(check())
        except Exception as exc:  # noqa: BLE001 - a check's own bug must not hide the others
            name = check.__name__.removeprefix("check_")
            results.append(
                Check(
                    name,
                    "fail",
                    f"the check itself failed: {exc!r}",
                    "report this as a finetty bug",
                )
            )
    return results


def checks_to_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]

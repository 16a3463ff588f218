"""K-quants (q4_k_m, q5_k_m, ...) through llama.cpp's own quantizer, which the gguf package lacks.

The quantizer is found, in order: ``$FINETTY_LLAMA_QUANTIZE`` (a llama-quantize binary),
``llama-quantize`` on PATH, or ``llama_cpp.llama_model_quantize`` from llama-cpp-python. It runs
in a child process so its C-level output and any crash stay out of the caller (and the TUI).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.export.files import ExportError, ExportFailed, Progress, no_progress, size_progress

# finetty name → llama.cpp type name (LLAMA_FTYPE_MOSTLY_<name>, and llama-quantize's argument)
LLAMA_QUANTS = {
    "q4_k_m": "Q4_K_M",
    "q5_k_m": "Q5_K_M",
    "q6_k": "Q6_K",
    "q3_k_m": "Q3_K_M",
    "q2_k": "Q2_K",
    "q4_k_s": "Q4_K_S",
    "q5_k_s": "Q5_K_S",
    "q3_k_s": "Q3_K_S",
    "q3_k_l": "Q3_K_L",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
}
# Approximate bits per weight, for the disk-space check.
BITS = {"q2_k": 3.0, "q3": 3.9, "q4": 4.9, "q5": 5.7, "q6_k": 6.6}
ENV_VAR = "FINETTY_LLAMA_QUANTIZE"
QUANTIZE_TIMEOUT = (600.0, 600.0)  # seconds: base, and per GiB of the F16 source


@dataclass(frozen=True)
class Quantizer:
    kind: str  # "binary" or "python"
    location: str

    def describe(self) -> str:
        return self.location if self.kind == "binary" else "llama-cpp-python (llama_model_quantize)"


def bits_per_weight(quant: str) -> float:
    return BITS.get(quant, BITS.get(quant[:2], 5.0))


def find_quantizer() -> Quantizer:
    """The first llama.cpp quantizer available, or an error that says how to get one."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ExportError(
                f"{ENV_VAR}={configured} is not an executable file.",
                hint="Point it at llama.cpp's llama-quantize binary, or unset it.",
            )
        return Quantizer("binary", str(path))
    on_path = shutil.which("llama-quantize")
    if on_path:
        return Quantizer("binary", on_path)
    if importlib.util.find_spec("llama_cpp") is not None:
        return Quantizer("python", sys.executable)
    raise ExportError(
        "K-quant GGUF (q4_k_m, q5_k_m, q6_k, q3_k_m, q2_k, ...) needs llama.cpp's quantizer, "
        "and none was found.",
        hint="Install one: `pip install llama-cpp-python` (builds llama.cpp, ~7 min on 2 cores), "
        "or build llama.cpp (cmake -B build && cmake --build build --target llama-quantize) and "
        f"put llama-quantize on PATH or set {ENV_VAR}=/path/to/llama-quantize. "
        "f16, bf16 and q8_0 need nothing extra.",
    )


def quantize(
    quantizer: Quantizer, source: Path, target: Path, quant: str, progress: Progress = no_progress
) -> None:
    """Quantize the F16/BF16 GGUF ``source`` into ``target`` as ``quant``."""
    from engine.export import native

    name = LLAMA_QUANTS[quant]
    label = f"GGUF {quant}: llama.cpp quantize ({quantizer.describe()}, child process)"
    progress(label, None)
    if quantizer.kind == "binary":
        command = [quantizer.location, str(source), str(target), name]
    else:
        command = [
            quantizer.location,
            "-m",
            "engine.export.native",
            "llama-quantize",
            str(source),
            str(target),
            name,
        ]
    timeout = native.file_timeout(source, *QUANTIZE_TIMEOUT)
    # llama.cpp writes the target as it goes: its size on disk is the measured progress.
    expected = int(source.stat().st_size * bits_per_weight(quant) / 16)  # from 16-bit weights
    with size_progress(target, expected, progress, f"GGUF {quant}: llama.cpp quantize"):
        outcome = native.run_child(command, timeout=timeout, progress=no_progress, label=label)
    if outcome.ok and target.is_file() and target.stat().st_size > 0:
        return
    tail = outcome.stderr_tail() or outcome.stdout.strip()[-500:]
    if outcome.timed_out:
        what = f"did not finish within {timeout:.0f} s and was stopped"
    else:
        what = f"{'crashed with' if outcome.crashed else 'ended with'} {native.exit_text(outcome.returncode)}"
    raise ExportFailed(
        f"llama.cpp quantize to {name} {what} (in a child process: finetty and any training run "
        "are unaffected). Nothing was kept under the target name and the unfinished .partial-* "
        "files were removed." + (f"\nllama.cpp said: {tail}" if tail else ""),
        hint=f"Run the quantizer by hand to see what it does: {' '.join(command[:1])} ... on the "
        "F16 GGUF (export --quant f16 writes one), or choose q8_0, which needs no llama.cpp.",
    )

"""Export a finished run as an adapter, a merged model, GGUF files and Ollama Modelfiles.

``export_run`` checks everything it can before any work (formats, architecture, tokenizer,
quantizer, existing targets), then writes each result under a hidden name, verifies it by a
round trip, and only then renames it into place. Progress goes to ``progress(message, fraction)``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.export import files, gguf_writer, llama_cpp, ollama, verify
from engine.export.adapter import RunInfo, export_adapter, read_run
from engine.export.files import ExportError, Progress, VerificationError, no_progress

FORMATS = ("adapter", "merged", "gguf")
QUANTS = (*gguf_writer.GGUF_TYPES, *llama_cpp.LLAMA_QUANTS)
__all__ = [
    "FORMATS",
    "QUANTS",
    "ExportError",
    "ExportReport",
    "Exported",
    "VerificationError",
    "export_run",
]


@dataclass
class Exported:
    kind: str  # adapter, merged, gguf, modelfile
    path: Path
    size: int
    checks: list[str] = field(default_factory=list)
    command: str | None = None  # `ollama create ...` for a Modelfile

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "size": self.size,
            "checks": self.checks,
            "command": self.command,
        }


@dataclass
class ExportReport:
    run_dir: Path
    out_dir: Path
    items: list[Exported] = field(default_factory=list)


def export_run(
    run: str | Path,
    formats: Sequence[str],
    *,
    quants: Sequence[str] = ("q8_0",),
    out: Path | None = None,
    ollama_files: bool = False,
    force: bool = False,
    dtype: str | None = None,
    runs_root: Path | None = None,
    progress: Progress = no_progress,
    on_start: Callable[[Path], None] | None = None,
) -> ExportReport:
    """Export ``run``; ``on_start(out_dir)`` is called once every check has passed, before any
    file is written (the child-process runner notes which ``.partial-*`` files were there)."""
    info = read_run(str(run), runs_root)
    check_choices(formats, quants, dtype)
    quants = list(dict.fromkeys(quants)) if "gguf" in formats else []
    merge_dtype = dtype or ("bf16" if not quants or quants == ["bf16"] else "fp16")
    out_dir = Path(out) if out else info.run_dir / "exports"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", info.name)
    targets = {"adapter": out_dir / "adapter", "merged": out_dir / "merged"}
    ggufs = {q: out_dir / f"{stem}-{q}.gguf" for q in quants}
    modelfiles = {q: out_dir / f"{stem}-{q}.Modelfile" for q in quants} if ollama_files else {}
    # Everything that can refuse the export is checked before any model is loaded.
    if "adapter" in formats and not info.is_adapter:
        raise ExportError(
            f"{info.run_dir} is a full fine-tune; it has no adapter to export.",
            hint="Use --format merged or --format gguf for this run.",
        )
    quantizer = None
    if quants:
        model_type = gguf_writer.check_architecture(_model_config(info))
        if gguf_writer.ARCHITECTURES[model_type][0] not in verify.TRANSFORMERS_READS and not (
            verify.llama_cpp_available()
        ):
            raise ExportError(
                f"A {model_type} GGUF can only be verified in llama.cpp (transformers cannot read "
                "it back), and llama-cpp-python is not installed.",
                hint="pip install llama-cpp-python (builds llama.cpp, ~7 min on 2 cores).",
            )
        gguf_writer.vocab_kind(info.final)
        if any(q in llama_cpp.LLAMA_QUANTS for q in quants):
            quantizer = llama_cpp.find_quantizer()
    wanted = [targets[f] for f in ("adapter", "merged") if f in formats]
    files.check_absent([*wanted, *ggufs.values(), *modelfiles.values()], force)
    files.make_out_dir(out_dir)
    if on_start is not None:
        on_start(out_dir)

    report = ExportReport(info.run_dir, out_dir)
    if "adapter" in formats:
        files.check_disk_space(out_dir, files.path_size(info.final), "the adapter")
        check = export_adapter(info, targets["adapter"], force=force, progress=progress)
        report.items.append(_item("adapter", targets["adapter"], [check]))
    if "merged" in formats:
        from engine.export.merged import export_merged

        check = export_merged(
            info, targets["merged"], dtype=merge_dtype, force=force, progress=progress
        )
        report.items.append(_item("merged", targets["merged"], [check]))
    if quants:
        with tempfile.TemporaryDirectory(prefix=".partial-work-", dir=out_dir) as work:
            source = _gguf_source(info, report, Path(work), merge_dtype, force, progress)
            _export_gguf(
                info,
                source,
                quants,
                ggufs,
                modelfiles,
                quantizer,
                Path(work),
                report,
                force=force,
                progress=progress,
            )
    progress("export: done", 1.0)
    return report


def check_choices(formats: Sequence[str], quants: Sequence[str], dtype: str | None) -> None:
    """Refuse unknown formats, GGUF types and dtypes; the export dialog checks its form with it."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(
            f"Unknown export format: {', '.join(bad) or '(none)'}.",
            hint=f"Use one or more of: {', '.join(FORMATS)}.",
        )
    if "gguf" in formats and not quants:  # e.g. `--quant ,`: a list with no type in it
        raise ExportError(
            "GGUF was asked for with no GGUF type (the --quant list is empty).",
            hint=f"Name at least one, e.g. --quant q8_0 (choices: {', '.join(QUANTS)}).",
        )
    bad = [q for q in quants if q not in QUANTS]
    if bad:
        raise ExportError(
            f"Unknown GGUF quantization: {', '.join(bad)}.",
            hint=f"Use one or more of: {', '.join(QUANTS)}.",
        )
    if dtype is not None and dtype not in ("bf16", "fp16"):
        raise ExportError(f"Unknown --dtype {dtype}.", hint="Use bf16 or fp16.")


def _model_config(info: RunInfo) -> dict:
    """The config of the model that will be converted: the base's for adapter runs."""
    import json

    if not info.is_adapter:
        return json.loads((info.final / "config.json").read_text(encoding="utf-8"))
    from transformers import AutoConfig

    from engine.models import embedded, loading

    source = loading.resolve_source(info.preset.model.name_or_path)
    kwargs: dict = {"trust_remote_code": info.preset.model.trust_remote_code}
    location = source.location
    if source.kind == "embedded":
        location = str(embedded.ensure_converted(source.location))
    elif source.kind == "gguf":
        kwargs["gguf_file"] = source.gguf_file
    elif source.kind == "hub" and info.preset.model.revision:
        kwargs["revision"] = info.preset.model.revision
    return AutoConfig.from_pretrained(location, **kwargs).to_dict()


def _gguf_source(
    info: RunInfo, report: ExportReport, work: Path, dtype: str, force: bool, progress: Progress
) -> Path:
    """An HF folder holding the weights to convert: final/, the merged export, or a merged copy."""
    if not info.is_adapter:
        return info.final
    merged = [item.path for item in report.items if item.kind == "merged"]
    if merged:
        return merged[0]
    from engine.export.merged import export_merged

    export_merged(info, work / "merged", dtype=dtype, force=True, progress=progress)
    return work / "merged"


def _export_gguf(
    info: RunInfo,
    source: Path,
    quants: list[str],
    ggufs: dict[str, Path],
    modelfiles: dict[str, Path],
    quantizer: llama_cpp.Quantizer | None,
    work: Path,
    report: ExportReport,
    *,
    force: bool,
    progress: Progress,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plan = gguf_writer.plan_gguf(source)
    progress("GGUF: reference logits from the HF model (float32)", None)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    reference = verify.build_reference(model, tokenizer)
    del model
    needed = sum(int(plan.n_params * _bytes_per_weight(q)) for q in quants)
    if quantizer is not None and "f16" not in quants:
        needed += plan.n_params * 2  # the F16 intermediate that llama.cpp quantizes from
    files.check_disk_space(ggufs[quants[0]].parent, needed, "the GGUF files")
    ordered = sorted(
        quants, key=lambda q: q in llama_cpp.LLAMA_QUANTS
    )  # f16 first: k-quants reuse it
    f16_file: Path | None = None
    for quant in ordered:
        target = ggufs[quant]
        with files.staged(target, directory=False, force=force) as staging:
            checks = []
            if quant in gguf_writer.GGUF_TYPES:
                progress(f"GGUF {quant}: writing {target.name}", 0.0)
                gguf_writer.write_gguf(plan, staging, quant, name=info.name, progress=progress)
                if plan.arch in verify.TRANSFORMERS_READS:
                    progress(f"GGUF {quant}: verifying (transformers read-back)", None)
                    checks.append(
                        verify.require(verify.verify_gguf_transformers(staging, reference, quant))
                    )
            else:
                if f16_file is None:
                    f16_file = work / f"{info.name}-f16.gguf"
                    gguf_writer.write_gguf(plan, f16_file, "f16", name=info.name, progress=progress)
                if quantizer is None:  # find_quantizer ran in the checks; keeps type checkers calm
                    raise ExportError(f"No llama.cpp quantizer for {quant}.")
                llama_cpp.quantize(quantizer, f16_file, staging, quant, progress)
                checks.append(
                    f"quantized by llama.cpp from {'the verified' if 'f16' in quants else 'an'} F16 GGUF"
                )
            if verify.llama_cpp_available():
                checks.append(
                    verify.verify_llama_cpp(
                        staging, reference, tokenizer, progress, name=target.name
                    )
                )
            elif quant in llama_cpp.LLAMA_QUANTS:
                checks.append("not loaded in llama.cpp here (llama-cpp-python is not installed)")
        if quant == "f16":
            f16_file = target
        report.items.append(_item("gguf", target, checks))
        if quant in modelfiles:
            _write_modelfile(
                info, source, tokenizer, target, modelfiles[quant], quant, force, report
            )


def _write_modelfile(
    info: RunInfo,
    source: Path,
    tokenizer: Any,
    gguf_path: Path,
    path: Path,
    quant: str,
    force: bool,
    report: ExportReport,
) -> None:
    family = ollama.detect_family(tokenizer.chat_template)
    text = ollama.modelfile_text(
        gguf_path.name,
        tokenizer.chat_template,
        system=ollama.default_system(tokenizer, family),
        parameters=ollama.generation_parameters(source),
    )
    files.atomic_text(path, text, force=force)
    command = ollama.create_command(ollama.ollama_name(info.name, quant), path)
    checks = [
        f"chat format {family}" if family else "no known chat format: Ollama's default template"
    ]
    report.items.append(Exported("modelfile", path, path.stat().st_size, checks, command))


def _bytes_per_weight(quant: str) -> float:
    return {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}.get(
        quant, llama_cpp.bits_per_weight(quant) / 8
    )


def _item(kind: str, path: Path, checks: list[str]) -> Exported:
    return Exported(kind, path, files.path_size(path), checks)

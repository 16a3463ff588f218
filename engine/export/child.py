"""A whole export in a child process, so nothing it does can end the caller.

The merge loads a second copy of the model and can meet the kernel's out-of-memory killer; native
code can crash. ``export_in_child`` runs ``export_run`` in ``python -m engine.export.child`` and
relays its progress; `finetty export` and the dashboard's export dialog both use it, so a dead
export ends only this child, never the process that trains. When the child dies without an
answer, the unfinished ``.partial-*`` files it left in the output folder are removed and the
error says how it died, in which phase, and what that means.

Protocol: the parent writes the export's arguments as one JSON object on the child's stdin; the
child answers with JSON lines on its stdout: ``{"started": {...}}`` once, ``{"progress": [text,
fraction]}`` as it goes, then ``{"report": {...}}`` or ``{"error": {...}}``. Library output goes
to the child's stderr, whose tail is kept for the message.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.core import errors
from engine.export.files import ExportFailed, Progress, no_progress, remove
from engine.export.native import exit_text

PROGRESS_INTERVAL = 0.1  # seconds between relayed fractions: bounded traffic and redraws


def export_in_child(
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
) -> Any:
    """``engine.export.export_run`` with the same arguments, run in a child process."""
    from engine.export import Exported, ExportReport

    request = {
        "run": str(run),
        "formats": list(formats),
        "quants": list(quants),
        "out": str(out) if out is not None else None,
        "ollama_files": ollama_files,
        "force": force,
        "dtype": dtype,
        "runs_root": str(runs_root) if runs_root is not None else None,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.export.child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(target=_drain, args=(process.stderr, tail), daemon=True)
    reader.start()
    assert process.stdin is not None and process.stdout is not None  # noqa: S101 - PIPEs above
    process.stdin.write(json.dumps(request))
    process.stdin.close()
    started: dict[str, Any] = {}
    answer: dict[str, Any] = {}
    phase = "starting"
    try:
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not ours: the protocol is JSON lines only
            if "progress" in message:
                phase = message["progress"][0]
                progress(phase, message["progress"][1])
            elif "started" in message:
                started = message["started"]
            else:
                answer = message
        process.wait()
    except BaseException:  # Ctrl+C: the child got it too; let it clean up, then go
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _remove_partials(started)
        raise
    reader.join(timeout=5)
    if "report" in answer:
        report = answer["report"]
        items = [
            Exported(i["kind"], Path(i["path"]), i["size"], i["checks"], i["command"])
            for i in report["items"]
        ]
        return ExportReport(Path(report["run_dir"]), Path(report["out_dir"]), items)
    if "error" in answer:
        _remove_partials(started)
        raise _rebuilt(answer["error"])
    removed = _remove_partials(started)
    raise _death(process.returncode, phase, removed, "\n".join(tail))


def _drain(stream: Any, tail: collections.deque[str]) -> None:
    for line in stream:
        if line.strip():
            tail.append(line.rstrip())


def _remove_partials(started: dict[str, Any]) -> int:
    """Remove the ``.partial-*`` entries this export created (not those that were there before)."""
    if not started:
        return 0
    folder, before = Path(started["out_dir"]), set(started["partials"])
    removed = 0
    for path in _partials(folder):
        if path.name not in before:
            remove(path)
            removed += 1
    return removed


def _partials(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.startswith(".partial-")]
    except OSError:
        return []


def _rebuilt(error: dict[str, Any]) -> errors.FinettyError:
    """The child's typed error, as the same class where it is one of ours."""
    from engine.export import files

    cls = getattr(files, error["class"], None) or getattr(errors, error["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, errors.FinettyError)):
        cls = ExportFailed
    try:
        rebuilt = cls(error["message"], hint=error["hint"], title=error["title"])
    except TypeError:  # a subclass with another signature
        rebuilt = ExportFailed(error["message"], hint=error["hint"], title=error["title"])
    rebuilt.exit_code = int(error["exit_code"])
    return rebuilt


def _death(returncode: int, phase: str, removed: int, tail: str) -> ExportFailed:
    how = exit_text(returncode)
    oom = returncode == -9
    cleaned = (
        f"The unfinished files it was writing ({removed} .partial-* entr"
        f"{'y' if removed == 1 else 'ies'}) were removed; nothing was left under a finished name"
        if removed
        else "Nothing was left under a finished name"
    )
    said = f"\nIts last output: {tail.splitlines()[-1]}" if tail and not oom else ""
    return ExportFailed(
        f"The export process died with {how} during '{phase}'. {cleaned}, and files exported "
        f"before were kept. finetty and any training run are unaffected.{said}",
        hint=(
            "Out of memory is the usual cause: the merge holds a full copy of the model in RAM. "
            "Check with `dmesg | tail` or `free -h`, then export on a machine with more memory, "
            "or export --format adapter, which needs no merge."
            if oom
            else "Run the same `finetty export` again to see whether it repeats; if it does, "
            "report it with the phase named above."
        ),
    )


# -- the child ------------------------------------------------------------------------------------
def child_main() -> int:
    """In the child: run the export, answer on the saved stdout; everything else goes to stderr."""
    answer = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # prints from libraries (and native code) land on stderr, not in the protocol
    sys.stdout = sys.stderr
    request = json.loads(sys.stdin.read())

    def send(message: dict[str, Any]) -> None:
        answer.write(json.dumps(message) + "\n")
        answer.flush()

    last = 0.0

    def progress(text: str, fraction: float | None = None) -> None:
        nonlocal last
        now = time.monotonic()
        if fraction is not None and 0 < fraction < 1 and now - last < PROGRESS_INTERVAL:
            return
        last = now
        send({"progress": [text, fraction]})

    progress("export: loading torch and transformers in the export process", None)
    from engine.export import export_run

    def started(out_dir: Path) -> None:
        names = [p.name for p in _partials(out_dir)]
        send({"started": {"out_dir": str(out_dir), "partials": names}})

    try:
        report = export_run(
            request["run"],
            request["formats"],
            quants=request["quants"],
            out=Path(request["out"]) if request["out"] else None,
            ollama_files=request["ollama_files"],
            force=request["force"],
            dtype=request["dtype"],
            runs_root=Path(request["runs_root"]) if request["runs_root"] else None,
            progress=progress,
            on_start=started,
        )
    except errors.FinettyError as error:
        send({"error": _error_dict(error)})
        return 0
    except Exception as error:  # noqa: BLE001 - reported by the parent, never a traceback
        failed = ExportFailed(
            f"The export failed: {type(error).__name__}: {error}",
            hint="Nothing was left under a finished name. Report this with the command you ran.",
        )
        send({"error": _error_dict(failed)})
        return 0
    send(
        {
            "report": {
                "run_dir": str(report.run_dir),
                "out_dir": str(report.out_dir),
                "items": [item.to_dict() for item in report.items],
            }
        }
    )
    return 0


def _error_dict(error: errors.FinettyError) -> dict[str, Any]:
    return {
        "class": type(error).__name__,
        "message": error.message,
        "hint": error.hint,
        "title": error.title,
        "exit_code": error.exit_code,
    }


if __name__ == "__main__":
    sys.exit(child_main())

"""Child processes for the steps of an export that can die: llama.cpp, and the export itself.

llama.cpp is native code: a build fault is a SIGSEGV, a bad file can hang it, and a merge can
meet the kernel's out-of-memory killer. Each of these ends a child process here, never finetty
(or the dashboard process that holds a live run). ``run_child`` runs one command with a timeout,
reports the elapsed time while it waits, and kills the child's whole process group on timeout;
``exit_text`` turns a child's exit status into words (the signal and what it usually means).

Test hook: ``FINETTY_TEST_FAULT=<point>:<action>`` makes a child that reaches ``fault_point(point)``
kill itself with ``action`` (a signal name such as ``SIGSEGV`` or ``SIGKILL``) or, for ``hang``,
sleep until it is killed. The points are listed in ``FAULT_POINTS``; tests use the hook to take
the very code path a real crash takes, deterministically.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.export.files import Progress, no_progress

FAULT_ENV = "FINETTY_TEST_FAULT"
FAULT_POINTS = ("llama-verify", "llama-quantize", "merged-save")
# What a signal that ends a child usually means, for the message.
SIGNAL_MEANINGS = {
    signal.SIGSEGV: "an invalid memory access in native code",
    signal.SIGBUS: "an invalid memory access in native code",
    signal.SIGABRT: "the native code aborted itself",
    signal.SIGILL: "an instruction this CPU does not have (a build made for another CPU)",
    signal.SIGFPE: "an arithmetic fault in native code",
    signal.SIGKILL: "killed from outside: usually the kernel's out-of-memory killer",
    signal.SIGTERM: "asked to stop from outside",
}
TICK_SECONDS = 1.0  # how often a waiting caller hears the elapsed time


def fault_point(point: str) -> None:
    """The test hook (see the module docstring); does nothing unless FINETTY_TEST_FAULT names it."""
    name, _, action = os.environ.get(FAULT_ENV, "").partition(":")
    if name != point:
        return
    if action == "hang":
        while True:
            time.sleep(60)
    os.kill(os.getpid(), getattr(signal, action, signal.SIGSEGV))


def exit_text(returncode: int) -> str:
    """``SIGSEGV (signal 11: an invalid memory access in native code)`` or ``exit status 3``."""
    if returncode >= 0:
        return f"exit status {returncode}"
    number = -returncode
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"signal {number}"
    meaning = SIGNAL_MEANINGS.get(sig, signal.strsignal(sig) or "")
    return f"{sig.name} (signal {number}: {meaning})"


@dataclass
class ChildOutcome:
    returncode: int  # negative: the signal that ended it
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def crashed(self) -> bool:
        return self.returncode < 0 and not self.timed_out

    def stderr_tail(self, lines: int = 5) -> str:
        return "\n".join(self.stderr.strip().splitlines()[-lines:])


def run_child(
    command: list[str],
    *,
    timeout: float,
    stdin: str = "",
    progress: Progress = no_progress,
    label: str = "",
) -> ChildOutcome:
    """Run ``command`` in its own process group; ``progress(label + elapsed)`` every second."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # a timeout kills everything it started, and Ctrl+C is ours
    )
    pending: str | None = stdin
    try:
        while True:
            left = timeout - (time.monotonic() - started)
            try:
                out, err = process.communicate(pending, timeout=max(0.01, min(TICK_SECONDS, left)))
                break
            except subprocess.TimeoutExpired:
                pending = None  # communicate() has sent stdin already
                elapsed = time.monotonic() - started
                if elapsed >= timeout:
                    _kill_group(process)
                    out, err = process.communicate()
                    return ChildOutcome(process.returncode, out, err, True, elapsed)
                if label:
                    progress(f"{label} ({elapsed:.0f}s)", None)
    except BaseException:  # Ctrl+C or an error of ours: never leave the child behind
        _kill_group(process)
        process.wait()
        raise
    return ChildOutcome(process.returncode, out, err, False, time.monotonic() - started)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


# -- the llama.cpp generation child --------------------------------------------------------------
def llama_generate_command() -> list[str]:
    return [sys.executable, "-m", "engine.export.native", "llama-generate"]


def _llama_generate(request: dict) -> dict:
    """In the child: load the GGUF, tokenize ``text``, greedy-generate ``new_tokens`` tokens."""
    fault_point("llama-verify")  # before the import: the hook works where llama.cpp is absent
    from llama_cpp import Llama

    kwargs = {"n_batch": request["n_batch"]} if request.get("n_batch") else {}
    try:
        llm = Llama(
            model_path=request["path"], n_ctx=256, n_threads=2, verbose=False, seed=0, **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - any load failure is reported to the parent
        return {"load_error": str(exc) or type(exc).__name__}
    try:
        tokens = llm.tokenize(request["text"].encode("utf-8"), add_bos=False, special=True)
        generated: list[int] = []
        if tokens == request["ids"]:
            for token in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
                generated.append(int(token))
                if len(generated) >= request["new_tokens"] or token == llm.token_eos():
                    break
        return {"tokens": [int(t) for t in tokens], "generated": generated}
    finally:
        llm.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["llama-generate"]:
        result = _llama_generate(json.loads(sys.stdin.read()))
        sys.stdout.flush()
        sys.stdout.write("\n" + json.dumps(result) + "\n")  # the last line is the answer
        return 0
    if argv[:1] == ["llama-quantize"]:  # source target TYPE
        fault_point("llama-quantize")  # before the import, as for llama-generate
        import ctypes

        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + argv[3])
        return int(
            llama_cpp.llama_model_quantize(argv[1].encode(), argv[2].encode(), ctypes.byref(params))
        )
    print(f"usage: python -m engine.export.native llama-generate|llama-quantize ({argv})")
    return 2


def file_timeout(path: Path, base: float, per_gib: float) -> float:
    """A timeout that grows with the file: ``base`` seconds plus ``per_gib`` for each GiB."""
    return base + per_gib * path.stat().st_size / 2**30


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

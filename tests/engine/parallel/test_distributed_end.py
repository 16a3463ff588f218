"""The end of a multi-process job (issue 18 item 11): every process ends, every time.

Real torchrun jobs of two CPU processes (gloo, torchrun's store on 127.0.0.1) whose rank 1 dies
or hangs at the end; every wait has a deadline, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.core.errors import EXIT_FAILED, EXIT_OK
from tui import launch

ROOT = Path(__file__).resolve().parents[3]

# Rank 1 leaves as MODE says; rank 0 ends as a run does (engine.parallel.distributed.shutdown).
WORKER = """
import datetime, json, os, signal, sys, time
from pathlib import Path
from engine.parallel import distributed

if os.environ["MODE"] == "ignores_sigterm":  # as finetty's ranks, stuck in a collective
    signal.signal(signal.SIGTERM, lambda *_: None)
    time.sleep(600)
ctx = distributed.init_from_env(use_cpu=True)
if ctx.rank == 0:
    signal.signal(signal.SIGTERM, lambda *_: None)  # as finetty's rank 0: it ends on its own
distributed.sum_floats([1.0], ctx)  # the job's last collective
mode = os.environ["MODE"]
if ctx.rank == 1 and mode == "dies":
    os._exit(3)  # gone before its end: no mark in the store
if ctx.rank == 1 and mode == "store_stops":
    os.kill(os.getppid(), signal.SIGSTOP)  # torchrun's agent, which holds the store
    while Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.01)  # stopped for sure before this rank's mark goes to it
if ctx.rank == 1 and mode == "hangs":
    os.kill(os.getpid(), signal.SIGSTOP)  # stuck for good, short of its end
if mode == "hangs_after_run":  # the launcher test: rank 0's run is over, rank 1 never exits
    if ctx.rank == 1:
        time.sleep(600)
    Path(os.environ["RUN_DIR"], "status.json").write_text(json.dumps({"state": "finished"}))
    os._exit(0)
started = time.monotonic()
timeout = datetime.timedelta(seconds=3)
unended = distributed.shutdown(ctx, clean=True, timeout=timeout)
if ctx.rank == 0:
    print("UNENDED", json.dumps(unended), round(time.monotonic() - started, 1), flush=True)
    if unended:
        print(distributed.unended_message(unended, timeout), flush=True)
distributed.leave(1 if unended else 0)
"""


def _torchrun(script: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
    ]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _kill_session(process: subprocess.Popen) -> None:
    """torchrun and its ranks (each rank in a session of its own) when still there."""
    for _, pid in launch.job_ranks(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


@pytest.mark.parametrize("mode", ["ends", "dies", "hangs"])
def test_rank_zero_names_a_rank_that_does_not_get_to_the_end(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    job = subprocess.Popen(
        _torchrun(script),
        cwd=ROOT,
        env=_env(MODE=mode),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = job.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        _kill_session(job)
        raise AssertionError(f"the job did not end ({mode})") from None
    finally:
        _kill_session(job)  # a SIGSTOPped rank 1 outlives a torchrun that gave up on it
    (line,) = [line for line in output.splitlines() if line.startswith("UNENDED")]
    _, ranks, seconds = line.split()
    if mode == "ends":
        assert ranks == "[]", output
        assert float(seconds) < 3, output  # nobody waits for a rank that got there
        assert job.returncode == 0, output
    else:
        assert ranks == "[1]", output
        assert float(seconds) < 30, output  # the bounded wait, not the 30-minute collective one
        assert "Rank 1 did not get to the end of the job within 3 s of rank 0" in output
        assert job.returncode != 0, output


def test_launcher_ends_a_job_whose_rank_hangs_after_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 0's run is over (status.json final) but rank 1 never exits: the launcher waits
    END_GRACE_S, names rank 1 with its pid, ends the job and exits non-zero."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr(launch, "END_GRACE_S", 3.0, raising=False)
    monkeypatch.setenv("MODE", "hangs_after_run")
    monkeypatch.setenv("RUN_DIR", str(run_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(ROOT)
    process = launch.start_job(_torchrun(script), None)
    # follow_job installs signal handlers, so it runs here; a watchdog ends a job it hangs on.
    watchdog = threading.Timer(150, _kill_session, args=(process,))
    watchdog.start()
    started = time.monotonic()
    try:
        code = launch.follow_job(process, run_dir)
    finally:
        watchdog.cancel()
        _kill_session(process)
    elapsed = time.monotonic() - started
    assert elapsed < 120, f"the launcher waited {elapsed:.0f} s"
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    found = re.search(
        r"rank 1 \(pid (\d+)\) on this node did not exit 3 s after the run ended", err
    )
    assert found, err
    assert not _alive(int(found[1]))  # the launcher ended it, with torchrun


def _ends_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_finished_run_whose_job_failed_at_the_end_is_not_a_success(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text('{"state": "finished"}')
    assert launch.job_exit_code(0, tmp_path, None) == EXIT_OK
    # torchrun reports a rank that died after the final model was written.
    assert launch.job_exit_code(1, tmp_path, None) == EXIT_FAILED


def test_ctrl_c_twice_kills_every_rank_not_only_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun starts each rank in a session of its own: killing torchrun's process group
    alone left ranks that ignore SIGTERM running (on a rented GPU, billed)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    monkeypatch.setenv("MODE", "ignores_sigterm")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(ROOT)
    process = launch.start_job(_torchrun(script), None)
    ranks: list[tuple[int, int]] = []

    def press_ctrl_c_twice() -> None:
        deadline = time.monotonic() + 120
        while len(ranks) < 2 and time.monotonic() < deadline:
            ranks[:] = launch.job_ranks(process.pid)
            time.sleep(0.5)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)  # follow_job's handler: stop, then kill
            time.sleep(1.5)

    presser = threading.Thread(target=press_ctrl_c_twice, daemon=True)
    watchdog = threading.Timer(180, _kill_session, args=(process,))
    presser.start()
    watchdog.start()
    try:
        launch.follow_job(process, None)
    finally:
        watchdog.cancel()
        presser.join(timeout=10)
        alive = [pid for _, pid in ranks if not _ends_within(pid, 5.0)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _kill_session(process)
    assert len(ranks) == 2
    assert not alive, f"ranks left running after Ctrl+C twice: {alive}"


def test_a_rank_whose_teardown_hangs_leaves_on_its_own(tmp_path: Path) -> None:
    """The store stops answering at the end (rank 1 stops its host, torchrun's agent): rank 0,
    waiting there for rank 1's mark, still ends in bounded time: through its watchdog (a
    traceback of where it stood) when the store call blocks, with the missing-rank message when
    the call fails."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    job = subprocess.Popen(
        _torchrun(script),
        cwd=ROOT,
        env=_env(MODE="store_stops"),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stdout), daemon=True)
    reader.start()
    started = time.monotonic()
    said = (
        "Timeout (0:00:16)!",  # faulthandler's, on its way to exit(1)
        "Rank 1 did not get to the end of the job within 3 s of rank 0",
    )

    def told() -> bool:
        return any(text in line for line in lines for text in said)

    try:
        while time.monotonic() - started < 150 and not told():
            time.sleep(0.5)
        elapsed = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGCONT)
        try:
            job.wait(timeout=90)
        finally:
            _kill_session(job)
    reader.join(timeout=10)
    assert told(), "".join(lines)[-3000:]
    # 16 s after rank 0's end; the rest is start-up on a loaded CPU. Without it: 30 minutes.
    assert elapsed < 120, f"{elapsed:.0f} s"

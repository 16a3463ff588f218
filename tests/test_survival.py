"""A run outlives its terminal and its viewers, and says honestly how it ended.

Real processes on the tiny model: a TUI under a pty whose connection drops (SIGHUP), Ctrl+C
twice, SIGKILL, and two viewers driving one run through its run directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import yaml

from engine.core.events import CheckpointSaved, RecordingSink, Step
from engine.runs import checkpoint, rundir
from engine.train.run import Run
from tui.cli import main
from tui.cli import terminal as cli_terminal

ROOT = Path(__file__).resolve().parent.parent


def write_preset(make_preset, folder: Path, **training: object) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(make_preset(**training).model_dump(mode="json")))
    return path


def events_of(run_dir: Path) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def wait_until(condition, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def latest_run(root: Path) -> Path | None:
    runs = rundir.all_runs(root)
    return runs[0] if runs else None


def has_event(root: Path, kind: str, **fields: object) -> bool:
    run_dir = latest_run(root)
    if run_dir is None:
        return False
    return any(
        e["type"] == kind and all(e.get(k) == v for k, v in fields.items())
        for e in events_of(run_dir)
    )


# -- SIGHUP: the SSH connection drops while the TUI is open --------------------------------------
class PtyChild:
    """`finetty ...` on a pseudo-terminal, so that the TUI opens as it would over SSH."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
        self.pid, self.master = pty.fork()
        if self.pid == 0:  # the child: a session leader whose controlling terminal is the pty
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "tui.cli", *args], env)
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.screen = bytearray()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        # A terminal that nobody reads fills up and blocks the app: read it like a real one.
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.screen += data

    def hang_up(self) -> None:
        """Close the master side, as sshd does when the connection drops."""
        self._stop.set()
        self._reader.join()
        os.close(self.master)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError("the process did not end in time")


def test_sighup_closes_the_ui_and_training_goes_on(make_preset, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    preset = write_preset(make_preset, tmp_path, max_steps=12, save_steps=4)
    child = PtyChild("train", str(preset), "--run-dir", str(root))
    try:
        wait_until(lambda: has_event(root, "step"), what="a first step in events.jsonl")
        run_dir = latest_run(root)
        assert run_dir is not None
        # Pause through the run directory (as `finetty watch` would), so that the steps after
        # the hang-up do not depend on timing.
        rundir.send_command(run_dir, "pause")
        wait_until(lambda: has_event(root, "state", state="paused"), what="paused")
        assert b"\x1b[?1049h" in child.screen  # the TUI really was on the terminal
        steps_before = [e["step"] for e in events_of(run_dir) if e["type"] == "step"]
        hung_up = time.time()
        child.hang_up()
        time.sleep(0.5)
        rundir.send_command(run_dir, "resume")  # a viewer from a new SSH session
        code = child.wait(timeout=120)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
        raise
    events = events_of(run_dir)
    after = [e for e in events if e["type"] == "step" and e["time"] > hung_up]
    assert after, "no step was written after the terminal went away"
    assert after[-1]["step"] == 12 and after[0]["step"] == steps_before[-1] + 1
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "finished"
    status = rundir.read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == 12
    assert code == 0
    log = (run_dir / "log.txt").read_text(encoding="utf-8")
    assert "step 12/12" in log and "\x1b[" not in log  # the human log, without terminal output
    assert (run_dir / "final" / "adapter_config.json").is_file()


@pytest.mark.anyio
async def test_watch_latest_attaches_with_full_history(
    make_preset, tmp_path: Path, monkeypatch
) -> None:
    from tui import app as app_module
    from tui.app import FinettyApp
    from tui.screens.dashboard import DashboardScreen

    root = tmp_path / "runs"
    result = Run(make_preset(max_steps=3), RecordingSink(), runs_root=root).execute()
    seen: dict = {}
    monkeypatch.setattr(app_module, "run_tui", lambda **kwargs: seen.update(kwargs) or 0)
    monkeypatch.setattr(cli_terminal, "interactive", lambda: True)  # as from a terminal
    assert main(["watch", "latest", "--run-dir", str(root)]) == 0
    assert seen["watch_dir"] == result.run_dir

    app = FinettyApp(watch_dir=seen["watch_dir"])
    async with app.run_test(size=(100, 30)) as pilot:
        deadline = time.monotonic() + 20
        while not (isinstance(app.screen, DashboardScreen) and app.screen.state == "finished"):
            assert time.monotonic() < deadline, "the dashboard did not replay the run"
            await pilot.pause(0.05)
        assert app.screen.last_step is not None and app.screen.last_step.step == 3
        await pilot.press("q")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- several viewers ------------------------------------------------------------------------------
VIEWER = "import sys; from pathlib import Path; from engine.runs.rundir import send_command; send_command(Path(sys.argv[1]), sys.argv[2])"


def test_two_viewers_in_two_processes_are_both_honoured(make_preset, tmp_path: Path) -> None:
    sink = RecordingSink()
    run = Run(make_preset(max_steps=10_000, save_steps=0), sink, runs_root=tmp_path)
    run.start()
    try:
        wait_until(lambda: sink.of_type(Step), what="a first step")
        viewers = [
            subprocess.Popen([sys.executable, "-c", VIEWER, str(run.run_dir), "save"], cwd=ROOT)
            for _ in range(2)
        ]
        assert [viewer.wait(timeout=60) for viewer in viewers] == [0, 0]
        wait_until(
            lambda: len([c for c in sink.of_type(CheckpointSaved) if c.reason == "requested"]) == 2,
            what="two requested checkpoints",
        )
        rundir.send_command(run.run_dir, "stop")
        result = run.join(timeout=60)
    finally:
        run.control.abort()
        run.join(timeout=30)
    assert result is not None and result.status == "stopped"


def test_concurrent_writers_never_tear_a_command(tmp_path: Path) -> None:
    reader = rundir.CommandReader(tmp_path / "commands.jsonl")
    code = (
        "import sys; from pathlib import Path; from engine.runs.rundir import send_command\n"
        "for _ in range(200): send_command(Path(sys.argv[1]), sys.argv[2])"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), command], cwd=ROOT)
        for command in ("pause", "resume")
    ]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    commands = reader.poll()
    assert sorted(set(commands)) == ["pause", "resume"] and len(commands) == 400


# -- Ctrl+C twice ---------------------------------------------------------------------------------
# The first Ctrl+C asks for a checkpoint; this makes writing it take 60 s, so that only the second
# Ctrl+C (abort at once) can end the process in time.
SLOW_SAVE = """
import sys, time
import engine.runs.checkpoint as checkpoint
original = checkpoint.save_checkpoint
def slow(*args, **kwargs):
    time.sleep(60)
    return original(*args, **kwargs)
checkpoint.save_checkpoint = slow
from tui.cli import entry
sys.argv = ["finetty", *sys.argv[1:]]
entry()
"""


def test_second_ctrl_c_aborts_at_once_with_130_and_final_status(
    make_preset, tmp_path: Path
) -> None:
    preset = write_preset(make_preset, tmp_path, max_steps=10_000, save_steps=0)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_SAVE,
            "train",
            str(preset),
            "--no-tui",
            "--json",
            "--run-dir",
            str(tmp_path / "runs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["type"] == "step":
                break
        proc.send_signal(signal.SIGINT)
        for line in proc.stdout:  # the graceful stop begins: the checkpoint is being written
            if json.loads(line).get("detail") == "stop":
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert elapsed < 3
    run_dir = rundir.resolve_run("latest", tmp_path / "runs")
    status = rundir.read_status(run_dir)
    assert status["state"] == "stopped" and status["step"] >= 1
    last = events_of(run_dir)[-2:]
    assert last[0]["type"] == "log" and "second Ctrl+C" in last[0]["text"]
    assert last[1]["type"] == "finished" and last[1]["status"] == "stopped"
    assert not checkpoint.complete_checkpoints(run_dir / "checkpoints")


# -- run state honesty ----------------------------------------------------------------------------
def fake_run(root: Path, name: str, stamp: str, **status: object) -> Path:
    run_dir = root / name / stamp
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("")
    (run_dir / "status.json").write_text(json.dumps({"step": 3, "total_steps": 6, **status}))
    return run_dir


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_runs_tells_every_state_apart(tmp_path: Path, capsys) -> None:
    states = {
        "running": {"state": "running", "pid": os.getpid()},
        "paused": {"state": "paused", "pid": os.getpid()},
        "finished": {"state": "finished", "pid": dead_pid()},
        "stopped": {"state": "stopped", "pid": dead_pid(), "last_checkpoint": "/c/checkpoint-3"},
        "failed": {
            "state": "failed",
            "pid": dead_pid(),
            "error": "The loss became nan at step 3",
            "last_checkpoint": "/c/checkpoint-2",
        },
        "died": {"state": "running", "pid": dead_pid(), "last_checkpoint": "/c/checkpoint-1"},
    }
    for name, status in states.items():
        fake_run(tmp_path, name, "20260101-000000", **status)
    assert main(["runs", "--run-dir", str(tmp_path), "--json"]) == 0
    rows = {Path(row["run_dir"]).parent.name: row for row in json.loads(capsys.readouterr().out)}
    assert {name: row["state"] for name, row in rows.items()} == {name: name for name in states}
    assert rows["died"]["last_checkpoint"] == "/c/checkpoint-1"

    assert main(["runs", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "error: The loss became nan at step 3" in out
    assert "last checkpoint: /c/checkpoint-2" in out and "last checkpoint: /c/checkpoint-1" in out


def test_sigkilled_run_shows_died_with_its_last_checkpoint(make_preset, tmp_path: Path) -> None:
    preset = write_preset(make_preset, tmp_path, max_steps=10_000, save_steps=2)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tui.cli",
            "train",
            str(preset),
            "--no-tui",
            "--json",
            "--run-dir",
            str(tmp_path / "runs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        saved = next(
            e for line in proc.stdout if (e := json.loads(line))["type"] == "checkpoint_saved"
        )
    finally:
        proc.kill()  # SIGKILL: no handler runs, nothing is written on the way out
        proc.wait()
    listing = subprocess.run(
        [sys.executable, "-m", "tui.cli", "runs", "--run-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert listing.stdout.startswith("died")
    checkpoint_line = next(
        line for line in listing.stdout.splitlines() if "last checkpoint" in line
    )
    last = Path(checkpoint_line.split("last checkpoint: ")[1])
    assert int(last.name.split("-")[1]) >= saved["step"]
    assert (last / checkpoint.MARKER).is_file()

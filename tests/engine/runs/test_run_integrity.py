"""Run-directory integrity (issue 18 items 1, 3, 5; issue 17 "resuming with the same command",
"runs that never trained"): one writer per run, atomic creation, no `--into` from the command
line, a final save that survives a full disk, and a control channel that cannot be subverted.

Every case runs the real code on the tiny model; full disks and read-only file systems are real
ones (a size limit on the process, or a tmpfs where the tests may mount one)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.errors import RunDirError
from engine.core.events import Event, RecordingSink, Step
from engine.runs import rundir, runlock
from engine.train.run import Run
from tui.cli import main

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """The CLI installs SIGINT/SIGTERM/SIGHUP handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def flat(text: str) -> str:
    """Panel text without borders, line breaks or spaces: rich wraps long paths anywhere."""
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


def refused(code: int | None, err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    assert code == 2, err
    for fragment in fragments:
        assert flat(fragment) in flat(err), (fragment, err)


def preset_file(tmp_path: Path, make_preset, name: str = "tiny.yaml", **training) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(make_preset(**training).model_dump(mode="json")))
    return path


class StopAtStep(RecordingSink):
    """Stops the run once it has seen ``step``, like a user pressing `x`."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.run = step, None

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, Step) and event.step == self.step and self.run is not None:
            self.run.control.stop()


def stopped_run(make_preset, root: Path) -> Path:
    """A real run stopped at step 4 of 6, with checkpoint-3 and checkpoint-4."""
    sink = StopAtStep(4)
    run = Run(make_preset(), sink, runs_root=root)
    sink.run = run
    assert run.execute().status == "stopped"
    return run.run_dir


# -- one writer per run directory ------------------------------------------------------------------
def test_resuming_a_run_that_is_training_is_refused_with_its_pid(
    make_preset, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "runs"
    paused = threading.Event()

    class PauseAtStep4(RecordingSink):
        def emit(self, event: Event) -> None:
            super().emit(event)
            if isinstance(event, Step) and event.step == 4:
                run.control.pause()
                paused.set()

    run = Run(make_preset(), PauseAtStep4(), runs_root=root)
    run.start()
    try:
        assert paused.wait(120), "the run never reached step 4"
        before = (run.run_dir / "events.jsonl").read_bytes()
        code = main(["train", "--resume", "latest", "--no-tui", "--run-dir", str(root)])
        refused(code, capsys.readouterr().err, f"process {os.getpid()}", "finetty watch")
        # The refused resume wrote nothing into the live run.
        assert (run.run_dir / "events.jsonl").read_bytes()[: len(before)] == before
        with pytest.raises(RunDirError, match=f"process {os.getpid()}"):
            Run(make_preset(), RecordingSink(), resume_dir=run.run_dir)  # the lock itself
        # `chat latest` on a live run no longer points at --resume.
        from engine.models.inference import resolve_chat_target

        with pytest.raises(RunDirError) as caught:
            resolve_chat_target("latest", runs_root=root)
        assert "--resume" not in (caught.value.hint or "") and "watch" in caught.value.hint
    finally:
        run.control.abort()
        run.join(timeout=60)
    assert runlock.holder(run.run_dir) is None  # released when the run ended


def test_ranks_other_than_0_of_a_resumed_job_follow_rank_0s_lock(
    make_preset, tmp_path: Path, monkeypatch
) -> None:
    """Every rank of a resumed multi-GPU job runs `finetty train --resume DIR`. Rank 0 takes the
    run's lock; a rank that checked resumability after that saw the lock and exited 2 (the flaky
    two-rank stop/resume test). Only rank 0 checks: the others never write the run directory."""
    from tui.cli.train import resume_target

    root = tmp_path / "runs"
    run_dir = stopped_run(make_preset, root)
    lock = runlock.acquire(run_dir)  # rank 0 of the job, already training
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        assert resume_target("latest", None, root) == run_dir
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunDirError, match=f"process {os.getpid()}"):
            resume_target("latest", None, root)
    finally:
        lock.release()


def test_the_lock_names_another_process_and_dies_with_it(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from engine.runs import runlock\n"
        "lock = runlock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert runlock.holder(tmp_path) == child.pid
        with pytest.raises(RunDirError, match=f"process {child.pid}"):
            runlock.acquire(tmp_path)
    finally:
        child.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        child.wait()
    assert runlock.holder(tmp_path) is None
    runlock.acquire(tmp_path).release()


def test_resuming_a_finished_run_is_refused_and_final_is_untouched(
    make_preset, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "runs"
    run = Run(make_preset(), RecordingSink(), runs_root=root)  # 6 steps, checkpoint-3
    assert run.execute().status == "finished"
    before = snapshot(run.run_dir)
    code = main(["train", "--resume", "latest", "--no-tui", "--run-dir", str(root)])
    refused(code, capsys.readouterr().err, "has finished", str(run.run_dir / "final"), "new run")
    with pytest.raises(RunDirError, match="has finished"):  # any caller of the engine, too
        Run(make_preset(), RecordingSink(), resume_dir=run.run_dir)
    assert snapshot(run.run_dir) == before


def test_the_training_command_plus_resume_resumes_that_presets_newest_run(
    make_preset, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "runs"
    run_dir = stopped_run(make_preset, root)
    preset = preset_file(tmp_path, make_preset)
    code = main(["train", str(preset), "--resume", "latest", "--no-tui", "--run-dir", str(root)])
    assert code == 0, capsys.readouterr().err
    assert rundir.read_status(run_dir)["state"] == "finished"
    assert (run_dir / "final" / "adapter_config.json").is_file()


def test_a_preset_given_with_resume_is_never_silently_ignored(
    make_preset, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "runs"
    run_dir = stopped_run(make_preset, root)
    before = snapshot(run_dir)
    edited = preset_file(tmp_path, make_preset, "edited.yaml", learning_rate=1e-3)
    code = main(
        ["train", str(edited), "--resume", str(run_dir), "--no-tui", "--run-dir", str(root)]
    )
    refused(code, capsys.readouterr().err, "training.learning_rate", "keeps its own config.yaml")
    other = yaml.safe_load(edited.read_text())
    other["name"] = "other"
    edited.write_text(yaml.safe_dump(other))
    code = main(["train", str(edited), "--resume", "latest", "--no-tui", "--run-dir", str(root)])
    refused(code, capsys.readouterr().err, f"No runs found under {root / 'other'}")
    assert snapshot(run_dir) == before


# -- runs that never trained -----------------------------------------------------------------------
def test_a_config_error_leaves_no_run_directory_and_latest_stays_put(
    make_preset, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "runs"
    run_dir = stopped_run(make_preset, root)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')  # no answer
    data = make_preset().model_dump(mode="json")
    data["dataset"]["path"] = str(broken)
    preset = tmp_path / "broken.yaml"
    preset.write_text(yaml.safe_dump(data))
    time.sleep(1.1)  # a new run would get a later stamp
    code = main(["train", str(preset), "--no-tui", "--run-dir", str(root)])
    refused(code, capsys.readouterr().err, "broken.jsonl", "no assistant turn")
    assert [p.name for p in (root / "tiny").iterdir()] == [run_dir.name]
    assert rundir.resolve_run("latest", root) == run_dir


def test_latest_skips_a_run_that_died_before_training(make_preset, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run_dir = stopped_run(make_preset, root)
    died = root / "tiny" / "29991231-235959"  # newer than anything
    died.mkdir()
    shutil.copy(run_dir / "config.yaml", died)
    (died / "events.jsonl").write_text(
        json.dumps({"type": "state", "v": 1, "state": "loading", "detail": "model"}) + "\n"
    )
    (died / "status.json").write_text(json.dumps({"state": "starting", "pid": 2**22 + 7}))
    os.utime(died / "events.jsonl", (time.time() + 60, time.time() + 60))
    assert rundir.never_trained(died) and not rundir.never_trained(run_dir)
    assert rundir.resolve_run("latest", root) == run_dir
    runlock.acquire(died)  # a run still loading (its lock held) is the newest one
    assert rundir.resolve_run("latest", root) == died


# -- atomic creation -----------------------------------------------------------------------------
def _make_run_dir(root: str, barrier, results) -> None:
    barrier.wait()
    try:
        results.put(str(rundir.new_run_dir("same", Path(root))))
    except RunDirError as exc:
        results.put(f"ERROR {exc}")


def test_run_directories_are_created_atomically(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for trial in range(20):
        root = tmp_path / str(trial)
        barrier, results = context.Barrier(6), context.Queue()
        workers = [
            context.Process(target=_make_run_dir, args=(str(root), barrier, results))
            for _ in range(6)
        ]
        for worker in workers:
            worker.start()
        made = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        assert not [m for m in made if m.startswith("ERROR")], made
        assert len(set(made)) == 6 and all(Path(m).is_dir() for m in made)


def test_an_unusable_runs_root_gets_the_hint_for_its_cause(tmp_path: Path) -> None:
    file_root = tmp_path / "file"
    file_root.write_text("")
    with pytest.raises(RunDirError) as caught:
        rundir.new_run_dir("x", file_root)
    assert "is a file" in (caught.value.hint or "")


# -- --into is the launcher's, not the user's ------------------------------------------------------
def test_into_is_not_accepted_from_the_command_line(make_preset, tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    run_dir = stopped_run(make_preset, root)
    before = snapshot(run_dir)
    preset = preset_file(tmp_path, make_preset)
    with pytest.raises(SystemExit) as caught:
        main(["train", str(preset), "--into", str(run_dir), "--no-tui", "--run-dir", str(root)])
    assert caught.value.code == 2
    assert "unrecognized arguments: --into" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_the_launch_channel_takes_only_a_fresh_folder_the_launcher_made(
    make_preset, tmp_path: Path, monkeypatch
) -> None:
    existing = stopped_run(make_preset, tmp_path / "runs")
    monkeypatch.setenv(runlock.ENV_LAUNCH_DIR, str(existing))
    monkeypatch.setenv(runlock.ENV_LAUNCH_TOKEN, "0" * 32)
    with pytest.raises(RunDirError, match="did not prepare"):
        runlock.launched_run_dir()
    fresh = rundir.new_run_dir("tiny", tmp_path / "runs")
    for key, value in runlock.launch_env(fresh).items():
        monkeypatch.setenv(key, value)
    assert runlock.launched_run_dir() == fresh
    (fresh / "events.jsonl").write_text("")
    with pytest.raises(RunDirError, match=r"already holds events\.jsonl"):
        runlock.launched_run_dir()
    (fresh / "events.jsonl").unlink()
    runlock.claim_launched(fresh)  # rank 0 took it: the same environment cannot be replayed
    with pytest.raises(RunDirError, match="did not prepare"):
        runlock.launched_run_dir()


# -- the final save on a full disk ---------------------------------------------------------------
def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill

    return apply


def check_final_save_failure(run_dir: Path, err: str, reason: str) -> None:
    assert "Traceback" not in err, err
    assert flat("Final model not saved") in flat(err) and flat(reason) in flat(err), err
    assert flat(f"df -h {run_dir}") in flat(err)
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and reason in status["error"], status
    assert not (run_dir / ".tmp-final").exists() and not (run_dir / "final").exists()
    # With save_steps 0 no checkpoint existed: the last step was saved instead of lost.
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["checkpoint-6"]
    assert "checkpoint-6" in status["error"]


def test_final_save_over_the_file_size_limit_keeps_the_steps(
    make_preset, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """RLIMIT_FSIZE (EFBIG) needs no privileges: the tokenizer's 2 MB file cannot be written,
    the small status and event files can."""
    assert (tiny_model_dir / "tokenizer.json").stat().st_size > 1 << 20
    root = tmp_path / "runs"
    preset = preset_file(tmp_path, make_preset, save_steps=0)
    command = [
        sys.executable,
        "-m",
        "tui.cli",
        "train",
        str(preset),
        "--no-tui",
        "--run-dir",
        str(root),
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(1 << 20),
    )
    assert done.returncode == 1, done.stderr
    run_dir = rundir.resolve_run("latest", root)
    check_final_save_failure(run_dir, done.stderr, "File too large")
    # Space back: the resume trains nothing again and saves the final model.
    again = subprocess.run(
        [sys.executable, "-m", "tui.cli", "train", "--resume", str(run_dir), "--no-tui"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert (run_dir / "final" / "adapter_config.json").is_file()
    assert rundir.read_status(run_dir)["state"] == "finished"
    steps = [e for e in map(json.loads, (run_dir / "events.jsonl").open()) if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]  # no step trained twice


def test_a_hang_up_leaves_a_headless_run_training_to_a_final_status(
    make_preset, tmp_path: Path
) -> None:
    """An SSH connection dropped without tmux sends SIGHUP: the run must not die mid-step with
    status.json saying "running" for ever."""
    root = tmp_path / "runs"
    preset = preset_file(tmp_path, make_preset, max_steps=40, save_steps=0)
    command = [sys.executable, "-m", "tui.cli", "train", str(preset), "--no-tui"]
    child = subprocess.Popen(
        [*command, "--run-dir", str(root)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            runs = rundir.all_runs(root)
            events = (runs[0] / "events.jsonl").read_text().splitlines() if runs else []
            if any(json.loads(line)["type"] == "step" for line in events[:-1]):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no step within 240 s")
        child.send_signal(signal.SIGHUP)
        assert child.wait(timeout=300) == 0
    finally:
        child.kill()
        child.wait()
    status = rundir.read_status(runs[0])
    assert status["state"] == "finished" and status["step"] == 40, status
    assert (runs[0] / "final" / "adapter_config.json").is_file()


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    """A real small file system; skipped where the tests may not mount one (not root)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_final_save_on_a_full_disk_keeps_the_steps(make_preset, tmp_path: Path, capsys) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        root = disk / "runs"
        preset = preset_file(tmp_path, make_preset, save_steps=0)
        code = main(["train", str(preset), "--no-tui", "--run-dir", str(root)])
        err = capsys.readouterr().err
        assert code == 1, err
        run_dir = rundir.resolve_run("latest", root)
        check_final_save_failure(run_dir, err, "No space left on device")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert main(["train", "--resume", "latest", "--no-tui", "--run-dir", str(root)]) == 0
        assert (run_dir / "final" / "adapter_config.json").is_file()


def test_resume_on_a_read_only_file_system_is_refused(make_preset, tmp_path: Path, capsys) -> None:
    source = stopped_run(make_preset, tmp_path / "runs")
    with tmpfs(tmp_path / "ro", "8m") as disk:
        copy = disk / "tiny" / source.name
        shutil.copytree(source, copy)
        before = snapshot(copy)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code = main(["train", "--resume", str(copy), "--no-tui"])
        refused(code, capsys.readouterr().err, "Read-only file system", "writable folder")
        assert snapshot(copy) == before


# -- the control channel ---------------------------------------------------------------------------
def test_a_symlinked_command_channel_is_refused_and_never_chmodded(
    make_preset, tmp_path: Path, capsys
) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text('{"command": "stop"}\n')
    target.chmod(0o644)
    channel = tmp_path / "commands.jsonl"
    channel.symlink_to(target)
    with pytest.raises(RunDirError, match="symbolic link"):
        rundir.CommandReader(channel)
    with pytest.raises(RunDirError, match="symbolic link"):
        rundir.send_command(tmp_path, "pause")
    assert target.stat().st_mode & 0o777 == 0o644
    assert target.read_text() == '{"command": "stop"}\n'
    # In a run being resumed: refused with exit 2 before anything is written.
    run_dir = stopped_run(make_preset, tmp_path / "runs")
    (run_dir / "commands.jsonl").unlink()
    (run_dir / "commands.jsonl").symlink_to(target)
    code = main(["train", "--resume", str(run_dir), "--no-tui"])
    refused(code, capsys.readouterr().err, "symbolic link")
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_link_swapped_in_later_is_not_read(tmp_path: Path) -> None:
    channel = tmp_path / "commands.jsonl"
    reader = rundir.CommandReader(channel)
    target = tmp_path / "elsewhere.txt"
    target.write_text('{"command": "abort"}\n')
    channel.unlink()
    channel.symlink_to(target)
    assert reader.poll() == []


def test_a_truncated_command_file_is_read_again(tmp_path: Path) -> None:
    """The issue's repro: `>` instead of `>>` used to leave the channel deaf for good."""
    reader = rundir.CommandReader(tmp_path / "commands.jsonl")
    rundir.send_command(tmp_path, "pause")
    rundir.send_command(tmp_path, "save")
    assert reader.poll() == ["pause", "save"]
    (tmp_path / "commands.jsonl").write_text('{"command":"resume"}\n')  # echo ... > commands.jsonl
    assert reader.poll() == ["resume"]
    rundir.send_command(tmp_path, "stop")  # what `finetty watch` sends next
    assert reader.poll() == ["stop"]


def test_a_rewrite_that_keeps_the_last_line_read_is_still_read_again(tmp_path: Path) -> None:
    """save, stop rewritten by `>` as stop, stop, pause: the line before the old offset is again
    `stop`, so a reader that compared only the last line it had read took the rewrite for an
    append and applied only pause (found by hypothesis)."""
    path = tmp_path / "commands.jsonl"
    reader = rundir.CommandReader(path)
    path.write_text('{"command":"save"}\n{"command":"stop"}\n')
    assert reader.poll() == ["save", "stop"]
    time.sleep(0.02)
    path.write_text('{"command":"stop"}\n{"command":"stop"}\n{"command":"pause"}\n')
    assert reader.poll() == ["stop", "stop", "pause"]


# Operations on the channel. A hand-typed `>` is followed by a poll before anything else is
# written (the reader polls every step; nobody types that fast): a rewrite to the same bytes
# followed by an append, between two polls, cannot be told from an append.
# (commands.jsonl after a poll always ends with a whole line, so `lines` is what was read.)
COMMAND = st.sampled_from(rundir.COMMANDS)
OPERATION = st.one_of(
    st.tuples(st.just("send"), st.lists(COMMAND, min_size=1, max_size=3)),  # finetty watch (>>)
    st.tuples(st.just("truncate"), st.lists(COMMAND, max_size=3)),  # `echo ... >`: no ids
    st.tuples(st.just("replace"), st.lists(COMMAND, max_size=3)),  # an editor: copy + new, renamed
    st.tuples(st.just("poll"), st.just([])),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=st.lists(OPERATION, max_size=12))
def test_every_command_in_the_file_is_applied_exactly_once(tmp_path_factory, operations) -> None:
    folder = tmp_path_factory.mktemp("channel")
    path = folder / "commands.jsonl"
    rundir.send_command(folder, "pause")  # sent before this process started: not for it
    reader = rundir.CommandReader(path)
    # The model: the file's lines as (key, command); a key is applied once. Copies keep an id.
    lines = [(json.loads(path.read_text())["id"], "pause")]
    applied = {lines[0][0]}
    fresh = iter(range(10**6))
    # What the reader has consumed: the file's bytes at the last poll, on the same inode (None
    # after a rename: the reader then reads the new file from its start, whatever it holds).
    read: list[str | None] = [path.read_text()]

    def poll() -> None:
        expected = [command for key, command in lines if key not in applied]
        applied.update(key for key, _ in lines)
        assert reader.poll() == expected, (operations, lines)
        read[0] = path.read_text()

    for kind, commands in operations:
        if kind == "send":
            for command in commands:
                rundir.send_command(folder, command)
            sent = [json.loads(line) for line in path.read_text().splitlines()[-len(commands) :]]
            lines += [(line["id"], line["command"]) for line in sent]
        elif kind == "truncate":
            time.sleep(0.02)  # the file clock's tick: a human's next `>` comes later still
            new = "".join(json.dumps({"command": c}) + "\n" for c in commands)
            path.write_text(new)
            # A rewrite that only extends what was read cannot be told from an append: those
            # first lines stay the ones already applied (and what was sent after the last poll
            # is overwritten unread). Any other rewrite is read anew.
            done = read[0]
            same = len(done.splitlines()) if done and new != done and new.startswith(done) else 0
            lines = lines[:same] + [(f"no-id-{next(fresh)}", c) for c in commands[same:]]
            poll()
        elif kind == "replace":
            kept = [line for line in path.read_text().splitlines(keepends=True) if '"id"' in line]
            ids = [os.urandom(8).hex() for _ in commands]
            added = [
                json.dumps({"command": c, "id": i}) + "\n"
                for c, i in zip(commands, ids, strict=True)
            ]
            (folder / "tmp").write_text("".join(kept + added))
            os.replace(folder / "tmp", path)
            read[0] = None
            lines = [line for line in lines if not line[0].startswith("no-id-")]
            lines += list(zip(ids, commands, strict=True))
        else:
            poll()
    poll()


# -- `finetty runs` with a damaged status.json -----------------------------------------------------
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)
STATUS_KEYS = (
    "state",
    "pid",
    "step",
    "total_steps",
    "best_loss",
    "started",
    "updated",
    "error",
    "last_checkpoint",
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    status=st.one_of(
        st.dictionaries(st.sampled_from(STATUS_KEYS), JSON_VALUE, max_size=len(STATUS_KEYS)),
        JSON_VALUE,
    ),
    as_json=st.booleans(),
)
def test_runs_lists_any_status_json_without_a_traceback(
    tmp_path_factory, capsys, status, as_json
) -> None:
    root = tmp_path_factory.mktemp("runs")
    run_dir = root / "tiny" / "20200101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("")
    (run_dir / "status.json").write_text(json.dumps(status))
    code = main(["runs", "--run-dir", str(root), *(["--json"] if as_json else [])])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert str(run_dir) in out


@pytest.mark.parametrize(
    ("key", "value"), [("pid", "abc"), ("best_loss", "low"), ("started", "yesterday")]
)
def test_runs_survives_the_reported_status_values(
    tmp_path: Path, capsys, key: str, value: str
) -> None:
    run_dir = tmp_path / "tiny" / "20200101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("")
    status = {
        "state": "running",
        "pid": 1,
        "step": 2,
        "best_loss": 1.5,
        "started": 1.0,
        "updated": 9.0,
    }
    (run_dir / "status.json").write_text(json.dumps({**status, key: value}))
    assert main(["runs", "--run-dir", str(tmp_path)]) == 0
    assert str(run_dir) in capsys.readouterr().out

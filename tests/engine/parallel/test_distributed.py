"""Several processes on the CPU (gloo): the launch logic CI can test without a GPU.

`finetty train --gpus 2` with training.use_cpu starts torchrun with two CPU processes; with the
same global batch and seed, its per-step losses must equal one process's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine.core.errors import ConfigError
from tui.launch import (
    LaunchPlan,
    job_exit_code,
    job_ranks,
    plan_launch,
    torchrun_command,
    worker_arguments,
)

ROOT = Path(__file__).resolve().parents[3]


def _write_preset(
    tmp_path: Path, model_dir: Path, dataset: Path, method: str = "lora", **training: object
) -> Path:
    data = {
        "name": "ddp",
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "max_seq_length": 64},
        "dataset": {"path": str(dataset), "format": "auto", "val_size": 4},
        "method": method,
        # No dropout: with it, ranks draw different masks and only the curves' trend can match.
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "training": {
            "learning_rate": 5e-3,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "max_steps": 4,
            "save_steps": 2,
            "logging_steps": 1,
            "seed": 0,
            "use_cpu": True,
            **training,
        },
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _finetty(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _assert_same_steps(one: list[dict], two: list[dict]) -> tuple[list[float], list[float]]:
    """Same per-step figures for one process and for the job; returns both runs' eval losses."""
    steps_one = [e for e in one if e["type"] == "step"]
    steps_two = [e for e in two if e["type"] == "step"]
    assert [e["step"] for e in steps_two] == [1, 2, 3, 4]
    for a, b in zip(steps_one, steps_two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3, abs=1e-5)
        assert b["tokens"] == a["tokens"]  # the global batch's tokens, not one rank's
    evals_one = [e["loss"] for e in one if e["type"] == "eval"]
    evals_two = [e["loss"] for e in two if e["type"] == "eval"]
    return evals_one, evals_two


def _only_run(root: Path) -> Path:
    runs = [path for path in root.glob("*/*") if path.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize(
    ("method", "checkpointing"), [("lora", False), ("lora", True), ("full", False), ("full", True)]
)
def test_two_cpu_processes_match_one(
    tmp_path: Path, tiny_model_dir: Path, chat_jsonl: Path, method: str, checkpointing: bool
) -> None:
    """With checkpointing, one process runs finetty's per-layer checkpointing; two run it
    under DDP (LoRA) or run transformers' under FSDP (full): every pair must agree."""
    preset = _write_preset(
        tmp_path, tiny_model_dir, chat_jsonl, method=method, gradient_checkpointing=checkpointing
    )
    single = _finetty("train", str(preset), "--no-tui", "--run-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    # Same global batch: 2 processes x micro-batch 2 x accumulation 1 = 1 x 2 x 2.
    double = _finetty(
        "train",
        str(preset),
        "--no-tui",
        "--gpus",
        "2",
        "--set",
        "training.gradient_accumulation_steps=1",
        "--run-dir",
        str(tmp_path / "two"),
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one_dir, two_dir = _only_run(tmp_path / "one"), _only_run(tmp_path / "two")
    one, two = _events(one_dir), _events(two_dir)

    started = next(e for e in two if e["type"] == "run_started")
    assert started["world_size"] == 2
    assert started["global_batch_size"] == 4
    evals_one, evals_two = _assert_same_steps(one, two)
    assert evals_two == pytest.approx(evals_one, rel=1e-4)
    # Rank 0 alone wrote the run directory: one started event, one finished, one final model.
    assert sum(e["type"] == "run_started" for e in two) == 1
    assert [e["status"] for e in two if e["type"] == "finished"] == ["finished"]
    final = "adapter_config.json" if method == "lora" else "config.json"
    assert (two_dir / "final" / final).exists()
    if method == "full":
        # FSDP2: sharded checkpoints (one file per rank), an ordinary final model.
        from engine.runs.checkpoint import complete_checkpoints

        last = complete_checkpoints(two_dir / "checkpoints")[-1]
        assert len(list((last / "sharded").glob("*.distcp"))) == 2
        _assert_same_weights(one_dir / "final", two_dir / "final")
        _export_merges_a_sharded_checkpoint(tmp_path, one_dir, two_dir)
    assert json.loads((two_dir / "status.json").read_text())["state"] == "finished"


def test_two_nodes_on_one_machine_match_one_process(
    tmp_path: Path, tiny_model_dir: Path, chat_jsonl: Path
) -> None:
    """`--nnodes 2` on CPU: two `finetty train` commands, one per "node", meet at 127.0.0.1.

    Each node runs one process (`--gpus 1`), so neither can finish without the other: the job is
    the world of 2 that torchrun's static rendezvous builds from the two commands. Node 0 alone
    makes and writes the run directory; node 1 (LoRA, so DDP: no sharded checkpoint) writes
    nothing, not even into the --run-dir it was given.
    """
    preset = _write_preset(tmp_path, tiny_model_dir, chat_jsonl)
    port = _free_port()
    roots = [tmp_path / "node0", tmp_path / "node1"]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    nodes = [_start_node(preset, rank, port, roots[rank], logs[rank]) for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 180
        for rank, node in enumerate(nodes):
            try:
                node.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"node {rank} did not finish (did the other node join?):\n"
                    + "\n".join(f"--- node {r}:\n{_tail(log)}" for r, log in enumerate(logs))
                ) from None
    finally:
        for node in nodes:
            _end_job(node)
    for rank, node in enumerate(nodes):
        assert node.returncode == 0, f"node {rank}:\n{_tail(logs[rank])}"
    announced = [log.read_text() for log in logs]
    assert "2 processes (1 per node x 2 node(s))" in announced[0]
    assert "2 processes (1 per node x 2 node(s))" in announced[1]
    assert "run directory" not in announced[1]  # node 1 neither made nor named one
    assert not roots[1].exists(), list(roots[1].rglob("*"))

    # The same global batch on one process: 1 x micro-batch 2 x accumulation 2.
    single = _finetty("train", str(preset), "--no-tui", "--run-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    one_dir, two_dir = _only_run(tmp_path / "one"), _only_run(roots[0])
    one, two = _events(one_dir), _events(two_dir)
    (started,) = [e for e in two if e["type"] == "run_started"]
    assert started["world_size"] == 2
    assert started["global_batch_size"] == 4
    evals_one, evals_two = _assert_same_steps(one, two)
    assert evals_two and evals_two == pytest.approx(evals_one, rel=1e-4)
    assert [e["status"] for e in two if e["type"] == "finished"] == ["finished"]
    assert json.loads((two_dir / "status.json").read_text())["state"] == "finished"
    assert (two_dir / "final" / "adapter_config.json").exists()
    # Nothing from node 1 in node 0's run directory: the same files as a one-process run's.
    assert _listing(two_dir) == _listing(one_dir)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_node(preset: Path, rank: int, port: int, root: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as output:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tui.cli",
                "train",
                str(preset),
                "--no-tui",
                "--gpus",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "--set",
                "training.gradient_accumulation_steps=1",
                "--run-dir",
                str(root),
            ],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def _end_job(launcher: subprocess.Popen) -> None:
    """Kill a launcher that is still running, and the torchrun job it started in a session of
    its own (which killing the launcher alone would leave behind)."""
    if launcher.poll() is not None:
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher.pid:
            # torchrun starts each rank in a session of its own: the ranks first, then torchrun.
            for _, rank_pid in job_ranks(int(entry.name)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(rank_pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(entry.name), signal.SIGKILL)
    launcher.kill()
    launcher.wait(timeout=30)


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no output)"


def _listing(run_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*"))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_stop_command_checkpoints_every_rank_and_resume_continues(
    tmp_path: Path, tiny_model_dir: Path, chat_jsonl: Path, method: str
) -> None:
    preset = _write_preset(
        tmp_path, tiny_model_dir, chat_jsonl, method=method, max_steps=400, save_steps=1000
    )
    root = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tui.cli",
            "train",
            str(preset),
            "--no-tui",
            "--gpus",
            "2",
            "--set",
            "training.gradient_accumulation_steps=1",
            "--run-dir",
            str(root),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_dir = _wait_for_steps(root, job, steps=3)
        from engine.runs.rundir import send_command

        send_command(run_dir, "stop")
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    stopped_at = max(e["step"] for e in _events(run_dir) if e["type"] == "step")
    from engine.runs.checkpoint import complete_checkpoints

    assert complete_checkpoints(run_dir / "checkpoints")
    # Resume on two processes, two more steps (a resumed run keeps its config.yaml).
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["training"]["max_steps"] = stopped_at + 2
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    result = _finetty("train", "--resume", str(run_dir), "--no-tui", "--gpus", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    events = _events(run_dir)
    resumed_started = [e for e in events if e["type"] == "run_started"][-1]
    assert resumed_started["resumed_from_step"] == stopped_at
    assert resumed_started["world_size"] == 2
    assert max(e["step"] for e in events if e["type"] == "step") == stopped_at + 2


def test_a_killed_rank_ends_the_job_instead_of_hanging(
    tmp_path: Path, tiny_model_dir: Path, chat_jsonl: Path
) -> None:
    preset = _write_preset(tmp_path, tiny_model_dir, chat_jsonl, max_steps=100000, save_steps=0)
    root = tmp_path / "runs"
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tui.cli",
            "train",
            str(preset),
            "--no-tui",
            "--gpus",
            "2",
            "--set",
            "training.gradient_accumulation_steps=1",
            "--run-dir",
            str(root),
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_dir = _wait_for_steps(root, job, steps=2)
        rank0_pid = json.loads((run_dir / "status.json").read_text())["pid"]
        follower = _sibling_worker(rank0_pid)
        os.kill(follower, signal.SIGKILL)
        started = time.monotonic()
        job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert time.monotonic() - started < 90
    assert job.returncode != 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["kind"] == "distributed"
    assert "lost contact with another rank" in status["error"]
    assert not _alive(rank0_pid)


def _export_merges_a_sharded_checkpoint(tmp_path: Path, one_dir: Path, two_dir: Path) -> None:
    """A run stopped before final/: export merges its newest sharded checkpoint (step 2 here)
    into ordinary safetensors, equal to the one-process run's step-2 weights."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    stopped = tmp_path / "stopped" / "ddp" / two_dir.name
    shutil.copytree(two_dir, stopped)
    shutil.rmtree(stopped / "final")
    out = tmp_path / "exported"
    result = _finetty("export", str(stopped), "--format", "merged", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = load_file(str(one_dir / "checkpoints" / "checkpoint-2" / "trainable.safetensors"))
    assert reference
    # The merged copy in the run's own dtype (float32 here), next to the checkpoint...
    consolidated = stopped / "checkpoints" / "checkpoint-2" / "consolidated"
    weights = AutoModelForCausalLM.from_pretrained(consolidated).state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-3, atol=1e-5, msg=name)
    # ... and the export made from it, in bf16.
    (folder,) = [path for path in out.iterdir() if (path / "config.json").is_file()]
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-2, atol=1e-3, msg=name)


def _assert_same_weights(one: Path, two: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(one).state_dict()
    b = AutoModelForCausalLM.from_pretrained(two).state_dict()
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-3, atol=1e-5, msg=name)


def _sibling_worker(rank0_pid: int) -> int:
    """The other worker process: same parent (torchrun's agent) as rank 0."""
    parent = int(Path(f"/proc/{rank0_pid}/stat").read_text().split()[3])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != rank0_pid:
            try:
                fields = (entry / "stat").read_text().split()
            except OSError:
                continue
            if int(fields[3]) == parent:
                return int(entry.name)
    raise AssertionError("no second worker found")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_steps(root: Path, job: subprocess.Popen, steps: int) -> Path:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert job.poll() is None, job.communicate()[1][-3000:]
        for events in root.glob("*/*/events.jsonl"):
            done = [e for e in _events(events.parent) if e["type"] == "step"]
            if len(done) >= steps:
                return events.parent
        time.sleep(0.3)
    raise AssertionError("the job did not reach its steps")


# -- the launch plan (no processes) --------------------------------------------------------------
def _args(**values: object) -> argparse.Namespace:
    base = dict(
        gpus=None,
        nnodes=1,
        node_rank=0,
        master_addr=None,
        master_port=29500,
        preset="p.yaml",
        overrides=[],
        run_dir=None,
        resume=None,
        json=False,
    )
    return argparse.Namespace(**{**base, **values})


def test_plan_needs_gpus_it_can_see() -> None:
    assert plan_launch(_args(), use_cpu=False, visible_gpus=8) is None
    assert plan_launch(_args(gpus="1"), use_cpu=False, visible_gpus=8) is None
    plan = plan_launch(_args(gpus="all"), use_cpu=False, visible_gpus=4)
    assert plan == LaunchPlan(4, 1, 0, None, 29500)
    with pytest.raises(ConfigError, match="shows 2 CUDA GPU"):
        plan_launch(_args(gpus="4"), use_cpu=False, visible_gpus=2)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        plan_launch(_args(gpus="all"), use_cpu=False, visible_gpus=0)
    with pytest.raises(ConfigError, match="not a number"):
        plan_launch(_args(gpus="two"), use_cpu=False, visible_gpus=2)
    with pytest.raises(ConfigError, match="--master-addr"):
        plan_launch(_args(gpus="8", nnodes=2), use_cpu=False, visible_gpus=8)
    with pytest.raises(ConfigError, match="need --gpus"):
        plan_launch(_args(nnodes=2, master_addr="10.0.0.1"), use_cpu=False, visible_gpus=8)
    with pytest.raises(ConfigError, match="--node-rank 2"):
        plan_launch(
            _args(gpus="8", nnodes=2, node_rank=2, master_addr="h"), use_cpu=False, visible_gpus=8
        )


def test_two_node_command_names_the_master() -> None:
    plan = plan_launch(
        _args(gpus="8", nnodes=2, node_rank=1, master_addr="10.0.0.1"),
        use_cpu=False,
        visible_gpus=8,
    )
    assert plan is not None and plan.world_size == 16
    command = torchrun_command(plan, worker_arguments(_args(overrides=["a.b=1"]), None))
    joined = " ".join(command)
    assert "--nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29500" in joined
    assert "--standalone" not in joined
    assert command[-6:] == ["tui.cli", "train", "p.yaml", "--set", "a.b=1", "--no-tui"]
    single_node = torchrun_command(LaunchPlan(2, 1, 0, None, 29500), ["p.yaml", "--into", "d"])
    assert "--standalone" in single_node


def test_exit_code_follows_rank_zero_status(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(json.dumps({"state": "stopped"}))
    assert job_exit_code(1, tmp_path, signal.SIGINT) == 130
    assert job_exit_code(1, tmp_path, signal.SIGTERM) == 143
    (tmp_path / "status.json").write_text(json.dumps({"state": "finished"}))
    assert job_exit_code(0, tmp_path, None) == 0
    (tmp_path / "status.json").write_text(json.dumps({"state": "failed"}))
    assert job_exit_code(1, tmp_path, None) == 1
    assert job_exit_code(1, None, None) == 1


def test_a_rank_error_reaches_rank_zero_with_its_number(tmp_path: Path, make_preset) -> None:
    """Through the store torchrun gives every rank; one process stands in for both ranks."""
    import socket

    import torch.distributed as dist

    from engine.core.events import RecordingSink
    from engine.parallel import distributed
    from engine.parallel.distributed import DistContext
    from engine.train.run import Run

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        rank0, rank1 = DistContext(0, 0, 2, 2), DistContext(1, 1, 2, 2)
        assert distributed.peer_failures(rank0) == []
        distributed.report_failure(rank1, "oom", "Out of memory", "CUDA ran out", "Lower it")
        (record,) = distributed.peer_failures(rank0)
        assert record["rank"] == 1 and record["message"] == "CUDA ran out"
        sink = RecordingSink()
        run = Run(make_preset(), sink, runs_root=tmp_path)
        run.fail_from_peer(record)
        run.dir_sink.close()
    finally:
        dist.destroy_process_group()
    (failed,) = [e for e in sink.events if e.type == "failed"]
    assert failed.title == "Rank 1 failed: Out of memory"
    assert failed.message == "rank 1: CUDA ran out" and failed.hint == "Lower it"
    assert json.loads((run.run_dir / "status.json").read_text())["state"] == "failed"


def test_fsdp_refuses_an_8bit_optimizer_before_starting(
    tmp_path: Path, tiny_model_dir: Path, chat_jsonl: Path
) -> None:
    preset = _write_preset(tmp_path, tiny_model_dir, chat_jsonl, method="full")
    result = _finetty(
        "train",
        str(preset),
        "--no-tui",
        "--gpus",
        "2",
        "--set",
        "training.optim=adamw_8bit",
        "--run-dir",
        str(tmp_path / "runs"),
    )
    assert result.returncode == 2
    assert "adamw_torch" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made

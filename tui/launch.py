"""`finetty train PRESET --gpus N`: one process per GPU under torchrun.

The launcher does not train. It makes the run directory (so that it knows what to watch), starts
`python -m torch.distributed.run ... -m tui.cli train ...` in a session of its own (the run
directory goes to rank 0 through the environment, engine.runs.runlock.launch_env), and then either
follows it in the terminal (headless) or opens the dashboard on the run
directory (TUI). Started in its own session, the job outlives the TUI and the SSH connection,
and Ctrl+C reaches only the launcher, which turns it into one SIGTERM: torchrun forwards that to
every rank, and rank 0 checkpoints and stops the whole job between two steps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_TERMINATED,
    ConfigError,
)

DEFAULT_MASTER_PORT = 29500
# Once status.json says the run is over, how long torchrun gets to end: every rank leaving,
# rank 0 waiting for the others (engine.parallel.distributed.END_TIMEOUT) and the nodes meeting.
END_GRACE_S = 120.0


@dataclass(frozen=True)
class LaunchPlan:
    nproc_per_node: int
    nnodes: int
    node_rank: int
    master_addr: str | None
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several GPUs (torchrun)")
    group.add_argument(
        "--gpus",
        metavar="N|all",
        help="train on N GPUs of this node (one process each, under torchrun)",
    )
    group.add_argument("--nnodes", type=int, default=1, metavar="N", help="nodes in the job")
    group.add_argument(
        "--node-rank", type=int, default=0, metavar="R", help="this node's rank (0 = the master)"
    )
    group.add_argument("--master-addr", metavar="HOST", help="address of node 0 (several nodes)")
    group.add_argument(
        "--master-port",
        type=int,
        default=DEFAULT_MASTER_PORT,
        metavar="PORT",
        help=f"port on node 0 (default {DEFAULT_MASTER_PORT})",
    )


def plan_launch(args: argparse.Namespace, *, use_cpu: bool, visible_gpus: int) -> LaunchPlan | None:
    """What to start, or None when one process is enough. Every mistake is a ConfigError."""
    if args.gpus is None:
        if args.nnodes != 1 or args.master_addr:
            raise ConfigError(
                "--nnodes and --master-addr need --gpus.",
                hint="For example: finetty train PRESET --gpus all --nnodes 2 --node-rank 0 "
                "--master-addr 10.0.0.1",
            )
        return None
    if args.gpus == "all":
        count = visible_gpus
        if count == 0:
            raise ConfigError(
                "--gpus all: no CUDA GPU is visible on this machine.",
                hint="Check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or drop --gpus.",
            )
    else:
        try:
            count = int(args.gpus)
        except ValueError:
            raise ConfigError(
                f"--gpus {args.gpus!r} is not a number.", hint="Give a count (--gpus 2) or `all`."
            ) from None
        if count < 1:
            raise ConfigError(f"--gpus {count}: give at least 1.")
        if not use_cpu and count > visible_gpus:
            raise ConfigError(
                f"--gpus {count}: this machine shows {visible_gpus} CUDA GPU(s).",
                hint="Lower --gpus, use --gpus all, or check CUDA_VISIBLE_DEVICES.",
            )
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise ConfigError(
            f"--node-rank {args.node_rank} must be between 0 and --nnodes - 1 ({args.nnodes - 1})."
        )
    if args.nnodes > 1 and not args.master_addr:
        raise ConfigError(
            f"--nnodes {args.nnodes} needs --master-addr (the address of node 0).",
            hint="Run the same command on every node, each with its own --node-rank.",
        )
    if count == 1 and args.nnodes == 1:
        return None
    return LaunchPlan(count, args.nnodes, args.node_rank, args.master_addr, args.master_port)


def visible_gpu_count() -> int:
    """CUDA GPUs this process may use: NVML's count, narrowed by CUDA_VISIBLE_DEVICES."""
    from engine.plan.gpus import detect_gpus

    count = len(detect_gpus())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([part for part in visible.split(",") if part.strip()]))
    return count


def torchrun_command(plan: LaunchPlan, train_args: list[str]) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(plan.nproc_per_node),
    ]
    if plan.nnodes == 1 and not plan.master_addr:
        command.append("--standalone")  # a free port on localhost: two jobs on one box coexist
    else:
        command += [
            "--nnodes", str(plan.nnodes),
            "--node-rank", str(plan.node_rank),
            "--master-addr", str(plan.master_addr or "127.0.0.1"),
            "--master-port", str(plan.master_port),
        ]  # fmt: skip
    return [*command, "-m", "tui.cli", "train", *train_args, "--no-tui"]


def worker_arguments(args: argparse.Namespace, run_dir: Path | None) -> list[str]:
    """The `finetty train` arguments every rank gets: the user's, minus the launch options."""
    out: list[str] = []
    if args.preset:
        out.append(args.preset)
    for override in args.overrides:
        out += ["--set", override]
    if args.run_dir:
        out += ["--run-dir", args.run_dir]
    if args.resume:
        out += ["--resume", str(run_dir or args.resume)]
    if args.json:
        out.append("--json")
    return out


def start_job(
    command: list[str], log_path: Path | None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """torchrun in a new session: no terminal signal or hang-up reaches it directly.
    ``env``: extra variables (the run directory hand-over of engine.runs.runlock.launch_env)."""
    output = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            command,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            cwd=os.getcwd(),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    finally:
        if output is not None:
            output.close()


def follow_job(process: subprocess.Popen, run_dir: Path | None) -> int:
    """Wait in the foreground. Ctrl+C once: checkpoint and stop; twice: kill the job."""
    interrupts = {"count": 0, "signal": None}

    def forward(signum: int, frame: object) -> None:
        interrupts["count"] += 1
        interrupts["signal"] = signum
        if interrupts["count"] == 1:
            print(
                "Stopping: every rank checkpoints first (Ctrl+C again to kill the job).",
                file=sys.stderr,
            )
            _signal_group(process, signal.SIGTERM)
        else:
            _signal_group(process, signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = wait_for_job(process, run_dir)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code is None:
        return EXIT_FAILED
    return job_exit_code(code, run_dir, interrupts["signal"])


def wait_for_job(process: subprocess.Popen, run_dir: Path | None) -> int | None:
    """torchrun's exit code, or None for a job that outlived its run by END_GRACE_S: then
    whatever still runs is named, by rank, and ended.

    Only node 0 has the run directory to tell when the run is over; on the other nodes torchrun
    waits at most its exit barrier (300 s) for node 0, which this bounds on node 0's side.
    """
    from engine.runs import rundir
    from engine.runs.runstate import TERMINAL

    over_at: float | None = None
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if over_at is None:
            if run_dir is not None and rundir.read_status(run_dir).get("state") in TERMINAL:
                over_at = time.monotonic()
        elif time.monotonic() - over_at > END_GRACE_S:
            print(stuck_job_message(job_ranks(process.pid)), file=sys.stderr)
            _end_job(process)
            return None


def stuck_job_message(ranks: list[tuple[int, int]]) -> str:
    """What the launcher says about a job still running END_GRACE_S after its run ended."""
    grace = f"{END_GRACE_S:.0f} s after the run ended"
    if ranks:
        names = ", ".join(f"rank {rank} (pid {pid})" for rank, pid in ranks)
        return (
            f"finetty: {names} on this node did not exit {grace}; ending the job. The run "
            "directory is complete; the job's output above shows where the rank stopped."
        )
    return (
        f"finetty: torchrun on this node was still waiting for the other node(s) {grace}: a rank "
        "there died or hung at the end (that node's output names it); ending the job here. "
        "The run directory is complete."
    )


def job_ranks(torchrun_pid: int) -> list[tuple[int, int]]:
    """(rank, pid) of the workers torchrun still runs on this node, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != torchrun_pid:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        rank = next((item[5:] for item in environ if item.startswith(b"RANK=")), None)
        if rank is not None and rank.isdigit():
            found.append((int(rank), int(entry.name)))
    return sorted(found)


def _end_job(process: subprocess.Popen) -> None:
    """SIGTERM to torchrun (it forwards it to its ranks), then SIGKILL to torchrun and ranks."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def job_exit_code(torchrun_code: int, run_dir: Path | None, stop_signal: int | None) -> int:
    """The exit code a one-process run would have had, read from rank 0's status.json.

    torchrun itself reports any unhappy worker as 1, which would hide a clean stop.
    """
    from engine.runs import rundir

    state = rundir.read_status(run_dir).get("state") if run_dir is not None else None
    if state == "finished":
        # The run is complete, but a rank that failed at the end must not read as success.
        return EXIT_OK if torchrun_code == 0 else EXIT_FAILED
    if state == "stopped":
        return EXIT_TERMINATED if stop_signal == signal.SIGTERM else EXIT_STOPPED
    if state == "failed" or torchrun_code != 0:
        return EXIT_FAILED
    return EXIT_OK


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        if sig == signal.SIGKILL:
            # torchrun starts each rank in a session of its own: killing torchrun's group alone
            # would leave the ranks running on the GPUs.
            for _, pid in job_ranks(process.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
            os.killpg(process.pid, sig)  # torchrun
        else:
            process.send_signal(sig)  # torchrun forwards it to every rank
    except ProcessLookupError:
        pass

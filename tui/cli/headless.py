"""A run without the TUI: the console reporter, signals, and how each rank's process ends."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine.core.errors import EXIT_FAILED, EXIT_STOPPED
from tui.quiet import quiet_libraries
from tui.report import report_error


def run_headless(
    preset,
    *,
    root: Path,
    resume_dir: Path | None,
    json_mode: bool,
    new_run_dir: Path | None = None,
) -> int:
    quiet_libraries()
    from engine.parallel.distributed import launched_distributed, rank_from_env
    from engine.train.run import Run
    from tui.console import ConsoleReporter

    if launched_distributed() and rank_from_env() != 0:
        return run_follower_rank(preset, resume_dir=resume_dir, new_run_dir=new_run_dir)
    reporter = ConsoleReporter(json_mode=json_mode, failure_panel=not json_mode)
    run = Run(preset, reporter, runs_root=root, resume_dir=resume_dir, new_run_dir=new_run_dir)
    interrupts = {"count": 0, "first": 0.0}

    def on_sigint(signum: int, frame: object) -> None:
        # Under a torchrun started in the foreground, one Ctrl+C reaches rank 0 twice: from the
        # terminal and forwarded by torchrun. Only a press a second later means "abort".
        if run.dist is not None and time.monotonic() - interrupts["first"] < 2.0:
            return
        interrupts["count"] += 1
        if interrupts["count"] == 1:
            interrupts["first"] = time.monotonic()
            reporter.err.print(
                "Stopping: writing a checkpoint first (Ctrl+C again to abort at once)."
            )
            run.control.stop()
        else:
            run.control.abort()
            # status.json must not go on saying "running" for a process that is gone.
            run.dir_sink.abandon(
                "Aborted by a second Ctrl+C: steps since the last checkpoint are lost."
            )
            os._exit(EXIT_STOPPED)

    def on_sigterm(signum: int, frame: object) -> None:
        run.stop_signal = "sigterm"
        run.control.stop()

    def on_sighup(signum: int, frame: object) -> None:
        # The terminal is gone (an SSH drop without tmux): training goes on, as under the TUI
        # (tui.hangup). Output that would hit the dead terminal goes to /dev/null and log.txt;
        # the run's own files carry on, and the process ends with a final status.
        from tui.hangup import detach_stdio

        log = run.run_dir / "log.txt" if run.dir_sink is not None else None
        detach_stdio(log)

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_sighup)  # under nohup it stays ignored
    peer = None
    with reporter:
        run.start()
        while run.alive:
            run.join(timeout=0.5)
            peer = run.peer_failure() if run.alive else None
            if peer is not None:
                run.fail_from_peer(peer)
                break
    if peer is not None and run.dir_sink is not None:
        # Another rank died; this one may be stuck in a collective that will never finish.
        run.dir_sink.close()
        reporter.err.print(f"Rank {peer.get('rank')} failed: {peer.get('message')}")
        reporter.err.print(f"run directory: {run.run_dir}")
        sys.stderr.flush()
        os._exit(EXIT_FAILED)
    result = run.result
    reporter.print_result()
    if result is None:
        return EXIT_FAILED
    if result.error is not None and not json_mode:
        report_error(result.error)
    if not json_mode and result.run_dir.is_dir():  # a never-trained one was removed
        reporter.err.print(f"run directory: {result.run_dir}")
    return leave_job(run, worker_exit_code(run, result.exit_code), reporter.err.print)


def worker_exit_code(run, code: int) -> int:
    """Under torchrun a clean stop exits 0: torchrun reports any other code as a crash with a
    page of "ChildFailedError". `finetty train --gpus` reads the real outcome from status.json."""
    if run.dist is not None and run.result is not None and run.result.status == "stopped":
        return 0
    return code


def run_follower_rank(preset, *, resume_dir: Path | None, new_run_dir: Path | None) -> int:
    """A rank other than 0: trains its share, writes nothing, follows rank 0's decisions.

    Signals are rank 0's business (torchrun forwards them to every rank); this rank ends when
    rank 0 broadcasts a stop, or when the job is torn down.
    """
    from engine.core.events import Event, Failed
    from engine.train.run import Run

    class FailurePrinter:
        def emit(self, event: Event) -> None:
            if isinstance(event, Failed):
                print(f"rank {run.rank}: {event.title}: {event.message}", file=sys.stderr)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run = Run(preset, FailurePrinter(), resume_dir=resume_dir, new_run_dir=new_run_dir)

    def on_sigterm(signum: int, frame: object) -> None:
        run.stop_signal = "sigterm"

    signal.signal(signal.SIGTERM, on_sigterm)
    code = worker_exit_code(run, run.execute().exit_code)
    return leave_job(run, code, lambda text: print(text, file=sys.stderr))


def leave_job(run, code: int, say: Callable[[str], object]) -> int:
    """How a rank's process ends under torchrun: rank 0 names the ranks that did not get to the
    end with it and exits non-zero, and every rank leaves without the interpreter's teardown,
    where gloo's threads can abort it (engine.parallel.distributed.leave). Returns only outside a job."""
    from engine.parallel import distributed

    if run.unended_ranks:
        say(distributed.unended_message(run.unended_ranks))
        code = EXIT_FAILED
    if run.dist is not None:
        distributed.leave(code)
    return code

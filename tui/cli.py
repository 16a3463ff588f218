"""The `finetty` command. Imports stay lazy: `finetty --help` and `finetty presets` never load torch."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_STOPPED, ConfigError, FinettyError
from tui.quiet import quiet_libraries
from tui.report import report_error

EPILOG = """examples:
  finetty                                 the TUI: recent runs, presets, new-run wizard
  finetty my.yaml                         the TUI, on the review screen of that preset
  finetty train smollm2-demo              fine-tune the embedded model on the built-in dataset (CPU)
  finetty watch latest                    live dashboard of a run started elsewhere
  finetty train my.yaml --set training.learning_rate=1e-4
  finetty train --resume latest           continue the newest run from its last checkpoint
  finetty runs                            list runs with status, best loss and duration
  finetty chat latest                     talk to the newest run
  finetty export latest --format gguf --quant q8_0 --ollama
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetty",
        description="Fine-tune LLMs from the terminal: presets, headless runs, chat, estimates.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train from a preset (file path or name)")
    train.add_argument("preset", nargs="?", help="preset file or name (optional with --resume)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key, e.g. training.learning_rate=1e-4 (repeatable)",
    )
    train.add_argument(
        "--no-tui",
        action="store_true",
        help="run headless: live view on a TTY, plain lines otherwise",
    )
    train.add_argument(
        "--json", action="store_true", help="print every event as a JSON line on stdout"
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR|latest",
        help="continue a run from its newest complete checkpoint",
    )
    train.add_argument(
        "--run-dir", metavar="DIR", help="root folder for runs (default ./runs or $FINETTY_RUNS)"
    )
    train.add_argument(
        "--probe",
        action="store_true",
        help="run a few real steps, then print measured vs estimated memory, speed and ETA",
    )
    train.add_argument(
        "--probe-steps", type=int, default=5, metavar="N", help="steps the probe runs (default 5)"
    )
    train.add_argument(
        "--price", type=float, metavar="USD", help="hourly price, for the probe's cost figure"
    )
    from tui.launch import add_launch_arguments  # light: argparse/subprocess only

    add_launch_arguments(train)

    watch = sub.add_parser("watch", help="live dashboard of a run started elsewhere")
    watch.add_argument("run", metavar="RUN_DIR|latest", help="a run directory, or `latest`")
    watch.add_argument("--run-dir", metavar="DIR", help="root folder for runs (for `latest`)")

    sub.add_parser("presets", help="list bundled and user presets")

    runs = sub.add_parser("runs", help="list runs with status, best loss and duration")
    runs.add_argument("--run-dir", metavar="DIR", help="root folder for runs")
    runs.add_argument("--json", action="store_true", help="machine-readable output")

    estimate = sub.add_parser("estimate", help="memory and time estimate without loading the model")
    estimate.add_argument("preset", help="preset file or name")
    estimate.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
    )
    estimate.add_argument(
        "--gpu", help="estimate for a named GPU (t4, l4, a100-40gb, h100-80gb, ...)"
    )
    estimate.add_argument(
        "--price", type=float, help="hourly price in dollars, for the cost estimate"
    )
    estimate.add_argument("--json", action="store_true", help="machine-readable output")

    doctor = sub.add_parser("doctor", help="check GPU, CUDA, bitsandbytes, disk and hub access")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    chat = sub.add_parser(
        "chat", help="chat with a finished run or a model (the chat pane; a plain REPL headless)"
    )
    chat.add_argument(
        "target", help="run directory, `latest`, a model folder, hub id or embedded:..."
    )
    chat.add_argument("--adapter", help="a PEFT adapter folder to load on top of the model")
    chat.add_argument(
        "--no-tui",
        action="store_true",
        help="plain REPL instead of the chat pane (the default when not on a terminal)",
    )
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--run-dir", metavar="DIR", help="root folder for runs (for `latest`)")
    from tui.export_cmd import add_export_parser  # light: argparse/json/time only

    add_export_parser(sub)
    parser.set_defaults(commands=tuple(sub.choices))  # for preset_argument
    return parser


def preset_argument(word: str, parser: argparse.ArgumentParser) -> bool:
    """Whether `finetty WORD` names a preset (a .yaml path, or a bundled or user preset's name)
    rather than a command: the README promises a name works wherever a path does."""
    if word.startswith("-") or word in parser.get_default("commands"):
        return False
    if word.endswith((".yaml", ".yml")):
        return True
    from engine.config.presets import find_preset
    from engine.core.errors import ConfigError

    try:
        find_preset(word)
    except ConfigError:
        return False  # neither: argparse names the commands
    return True


def require_terminal(what: str, instead: str, *, preset: str | None = None) -> None:
    """Refuse to start the full-screen TUI without a terminal: it would write escape codes into
    a file or pipe and wait forever for keys that cannot come. A named preset is checked first,
    so a missing one reads the same as in `finetty train`."""
    if preset is not None:
        from engine.config.presets import find_preset

        find_preset(preset)
    if interactive():
        return
    from engine.core.errors import NoTerminalError

    ends = [n for n, s in (("input", sys.stdin), ("output", sys.stdout)) if not _is_tty(s)]
    raise NoTerminalError(
        f"{what} in the full-screen TUI, which needs a terminal, but this command's "
        f"{' and '.join(ends)} {'is' if len(ends) == 1 else 'are'} not one (a pipe, a file or "
        "/dev/null).",
        hint=f"{instead}. Or run it from an interactive shell (ssh -t, tmux).",
    )


def _is_tty(stream: object) -> bool:
    return bool(getattr(stream, "isatty", None)) and stream.isatty()  # type: ignore[attr-defined]


def interactive() -> bool:
    """The TUI needs a terminal on both ends; pipes, nohup and CI get the headless paths."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and preset_argument(argv[0], parser):
        # `finetty PRESET` (.yaml or name): the TUI, straight to the review screen of that preset.
        try:
            require_terminal(
                f"`finetty {argv[0]}` opens that preset's review screen",
                f"To train without a terminal: finetty train {argv[0]} --no-tui",
                preset=argv[0],
            )
        except FinettyError as error:
            report_error(error)
            return error.exit_code
        from tui.app import run_tui

        return run_tui(runs_root=None, start_screen="review", preset_path=argv[0])
    args = parser.parse_args(argv)
    if args.version:
        from engine import __version__

        print(f"finetty {__version__}")
        return 0
    if args.command is None:
        if not interactive():
            parser.print_help()
            return 0
        from engine.runs import rundir
        from tui.app import run_tui

        return run_tui(runs_root=rundir.runs_root())
    try:
        handler = {
            "train": cmd_train,
            "watch": cmd_watch,
            "presets": cmd_presets,
            "runs": cmd_runs,
            "estimate": cmd_estimate,
            "doctor": cmd_doctor,
            "chat": cmd_chat,
            "export": cmd_export,
        }[args.command]
        return handler(args)
    except FinettyError as error:
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        return EXIT_STOPPED


# -- train ---------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from engine.config.presets import load_preset, run_config
    from engine.core.errors import ConfigError
    from engine.runs import rundir

    root = rundir.runs_root(args.run_dir)
    resume_dir = None
    if args.resume:
        if args.overrides:
            raise ConfigError(
                "--set cannot be combined with --resume.",
                hint="A resumed run keeps its config.yaml.",
            )
        resume_dir = resume_target(args.resume, args.preset, root)
        preset = run_config(resume_dir)
    elif args.preset:
        preset, _ = load_preset(args.preset, args.overrides)
    else:
        raise ConfigError(
            "finetty train needs a preset.", hint="For example: finetty train smollm2-demo"
        )
    if preset.hardware_problems(cuda=False):  # a CUDA-only setting: ask torch (~1 s) only then
        from engine.config.presets import check_hardware
        from engine.models.loading import select_device

        # Once, before any run directory exists; the wizard asks the same function.
        source = str(resume_dir / "config.yaml") if resume_dir else args.preset
        check_hardware(preset, cuda=select_device(use_cpu=False) == "cuda", source=source)
    from engine.parallel.distributed import launched_distributed, rank_from_env
    from tui.launch import plan_launch, visible_gpu_count

    if launched_distributed() and args.gpus is not None:
        raise ConfigError(
            "--gpus was given inside a torchrun/accelerate job, which already started one "
            "process per GPU.",
            hint="Drop --gpus when you launch with torchrun yourself.",
        )
    plan = None
    if not launched_distributed():
        plan = plan_launch(args, use_cpu=preset.training.use_cpu, visible_gpus=visible_gpu_count())
    if args.probe:
        if resume_dir is not None or plan is not None:
            raise ConfigError(
                "--probe runs on one GPU; it cannot be combined with --resume or --gpus."
            )
        return run_probe(
            preset, root=root, steps=args.probe_steps, price=args.price, json_mode=args.json
        )
    if plan is not None:
        from engine.parallel.sharded import check_launch

        check_launch(preset)
        return launch_job(args, plan, preset.name, root=root, resume_dir=resume_dir)
    from engine.runs import runlock

    # The multi-GPU launcher hands rank 0 the folder it made (never a flag: see engine.runs.runlock).
    new_run_dir = None
    if launched_distributed() and resume_dir is None and rank_from_env() == 0:
        new_run_dir = runlock.launched_run_dir()
    if not args.no_tui and not args.json and interactive() and not launched_distributed():
        from tui.app import run_tui

        return run_tui(preset, runs_root=root, resume_dir=resume_dir)
    return run_headless(
        preset, root=root, resume_dir=resume_dir, json_mode=args.json, new_run_dir=new_run_dir
    )


def resume_target(ref: str, preset_ref: str | None, root: Path) -> Path:
    """The run `--resume` names, checked before any of its files is opened: it must have a
    checkpoint, must not be finished, and no other process may be training it.

    A preset given with --resume is honoured as a choice of run, never as a new config: `latest`
    is that preset's newest run, and a run of another preset, or one whose config differs from
    the preset's, is refused (a resumed run keeps its config.yaml).
    """
    from engine.config.presets import load_preset, run_config
    from engine.core.errors import ConfigError
    from engine.runs import rundir

    preset = load_preset(preset_ref)[0] if preset_ref else None
    run_dir = rundir.resolve_run(ref, root, name=preset.name if preset else None)
    rundir.check_resumable(run_dir)
    if preset is not None:
        differences = config_differences(preset, run_config(run_dir))
        if differences:
            raise ConfigError(
                f"{preset_ref} does not match the config of {run_dir}: "
                f"{', '.join(differences[:5])}{' ...' if len(differences) > 5 else ''} differ.",
                hint=f"A resumed run keeps its own config.yaml. Resume it as it was with "
                f"`finetty train --resume {run_dir}`, or start a new run with the preset.",
            )
    return run_dir


def config_differences(a, b) -> list[str]:
    """The dotted keys whose values differ between two presets."""

    def flat(data: object, prefix: str = "") -> dict[str, object]:
        if isinstance(data, dict):
            out: dict[str, object] = {}
            for key, value in data.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): data}

    left, right = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return sorted(key for key in left.keys() | right.keys() if left.get(key) != right.get(key))


def launch_job(args, plan, name: str, *, root: Path, resume_dir: Path | None) -> int:
    """Several processes under torchrun; this process watches (TUI) or follows (headless)."""
    from engine.runs import rundir, runlock
    from tui.launch import follow_job, start_job, torchrun_command, worker_arguments

    run_dir = resume_dir
    env = None
    if run_dir is None and plan.node_rank == 0:
        run_dir = rundir.new_run_dir(name, root)  # only node 0 writes a run directory
        env = runlock.launch_env(run_dir)
    command = torchrun_command(plan, worker_arguments(args, run_dir))
    print(
        f"finetty: {plan.world_size} processes ({plan.nproc_per_node} per node x {plan.nnodes} "
        f"node(s)) under torchrun" + (f"; run directory {run_dir}" if run_dir else ""),
        file=sys.stderr,
    )
    if not args.no_tui and not args.json and interactive() and run_dir is not None:
        from tui.app import run_tui

        log = run_dir / "launcher.log"
        process = start_job(command, log, env)
        print(f"finetty: job pid {process.pid}, its output in {log}", file=sys.stderr)
        # The dashboard watches the run directory; leaving it leaves the job running.
        return run_tui(runs_root=root, watch_dir=run_dir)
    return follow_job(start_job(command, None, env), run_dir)


def cmd_watch(args: argparse.Namespace) -> int:
    from engine.runs import rundir
    from tui.app import run_tui

    root = rundir.runs_root(args.run_dir)
    run_dir = rundir.resolve_run(args.run, root)
    require_terminal(
        f"`finetty watch` shows {run_dir}",
        f"Without a terminal: finetty runs --run-dir {root} for its state, "
        f"or tail -f {run_dir / 'log.txt'} for its log",
    )
    return run_tui(runs_root=root, watch_dir=run_dir)


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


def run_probe(preset, *, root: Path, steps: int, price: float | None, json_mode: bool) -> int:
    """`finetty train PRESET --probe`: progress on stderr, the comparison (or JSON) on stdout."""
    quiet_libraries()
    from dataclasses import asdict

    from engine.diagnose.probe import format_probe, probe

    def progress(text: str) -> None:
        print(f"probe: {text}", file=sys.stderr, flush=True)

    result = probe(preset, steps, root, hourly_price=price, progress=progress)
    if json_mode:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(format_probe(result))
    return 0


# -- listings ------------------------------------------------------------------------------------
def cmd_presets(args: argparse.Namespace) -> int:
    from engine.config.presets import list_presets, user_presets_dir

    for info in list_presets():
        print(f"{info.name:36} {info.origin:8} {info.description}")
    print(f"\nuser presets folder: {user_presets_dir()}", file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.core import units
    from engine.runs import rundir, runstate
    from engine.runs.runstate import shown_state

    rows = []
    for path in rundir.all_runs(rundir.runs_root(args.run_dir)):
        status = readable_status(rundir.read_status(path))
        state = shown_state(
            status
        )  # engine.runs.runstate: "died" for a live run whose process is gone
        rows.append(
            {
                "run_dir": str(path),
                "state": state,
                "phase": runstate.DIED if state == runstate.DIED else status.get("phase", state),
                "step": status.get("step", 0),
                "total_steps": status.get("total_steps"),
                "best_loss": status.get("best_loss"),
                "duration_s": runstate.shown_duration_s(status, time.time()),
                "error": status.get("error"),
                "last_checkpoint": status.get("last_checkpoint"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs yet: start one with `finetty train smollm2-demo`", file=sys.stderr)
    for row in rows:
        best = f"{row['best_loss']:.4f}" if row["best_loss"] is not None else "-"
        duration = units.duration(row["duration_s"]) if row["duration_s"] else "-"
        step = f"{row['step']}/{row['total_steps'] or '?'}"
        print(f"{row['state']:9} {step:>11} best {best:>8} {duration:>9}  {row['run_dir']}")
        if row["error"]:
            print(f"          error: {row['error']}")
        if row["last_checkpoint"] and row["state"] not in ("finished", "running", "paused"):
            print(f"          last checkpoint: {row['last_checkpoint']}")
    return 0


# status.json is a file anyone can edit: each field `finetty runs` shows, and its type.
STATUS_FIELDS = {
    "state": str,
    "phase": str,
    "pid": int,
    "step": int,
    "total_steps": int,
    "best_loss": float,
    "started": float,
    "updated": float,
    "elapsed_s": float,
    "error": str,
    "last_checkpoint": str,
}


def readable_status(status: object) -> dict[str, object]:
    """The fields of a status.json that have the type `finetty runs` expects; any other value
    (a string pid, a NaN loss, a list) is dropped, so that one damaged file cannot stop the list."""
    import math

    if not isinstance(status, dict):
        return {}
    clean: dict[str, object] = {}
    for key, kind in STATUS_FIELDS.items():
        value = status.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if (kind is str and isinstance(value, str)) or (
            kind is int and isinstance(value, int) and 0 <= value < 2**63
        ):
            clean[key] = value
        elif kind is float and isinstance(value, int | float) and math.isfinite(value):
            clean[key] = float(value)
    if not 0 < int(clean.get("pid", 0)) < 2**22:  # Linux's pid_max: anything else is no pid
        clean.pop("pid", None)
    return clean


def cmd_estimate(args: argparse.Namespace) -> int:
    from engine.config.presets import load_preset
    from engine.plan.estimate import estimate_for, format_estimate
    from engine.plan.gpus import detect_gpus, gpu_spec, spec_for

    preset, _ = load_preset(args.preset, args.overrides)
    if args.gpu:
        gpu = gpu_spec(args.gpu)
    else:
        detected = detect_gpus()
        gpu = spec_for(detected[0]) if detected and not preset.training.use_cpu else None
    result = estimate_for(preset, gpu, args.price)
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2, default=str))
    else:
        print(format_estimate(result))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from engine.diagnose.doctor import checks_to_json, run_checks

    checks = run_checks()
    if args.json:
        print(json.dumps(checks_to_json(checks), indent=2))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "info": "info"}
        for check in checks:
            print(f"[{marks.get(check.status, check.status)}] {check.name}: {check.detail}")
            if check.fix and check.status in ("warn", "fail"):
                print(f"       fix: {check.fix}")
    return 1 if any(check.status == "fail" for check in checks) else 0


def cmd_chat(args: argparse.Namespace) -> int:
    from engine.models.generate import generation_problems
    from engine.models.inference import resolve_chat_target

    # Before anything loads: a bad flag is a message in a second, not a traceback after the model.
    problems = generation_problems(args.temperature, args.top_p, args.max_new_tokens)
    if problems:
        raise ConfigError(
            "Invalid chat option: " + "; ".join(problems) + ".",
            hint="e.g. --temperature 0.7 --top-p 0.9 --max-new-tokens 256 (temperature 0 is greedy).",
            problems=problems,
        )

    # Checked before either front-end starts: a bad target reads the same in both (exit 2).
    target = resolve_chat_target(
        args.target, adapter=args.adapter, runs_root=Path(args.run_dir) if args.run_dir else None
    )
    if args.no_tui or not interactive():
        from tui.repl import chat_repl

        return chat_repl(args, target)
    quiet_libraries()
    from tui.chat_app import run_chat_app
    from tui.screens.chat import GenerationSettings

    settings = GenerationSettings(
        system=args.system or "",
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
    )
    return run_chat_app(target, settings)


def cmd_export(args: argparse.Namespace) -> int:
    from tui.export_cmd import cmd_export as run_export

    return run_export(args)


def entry() -> None:
    try:
        code = main()
    except BrokenPipeError:  # `finetty runs | head`
        code = 0
    except KeyboardInterrupt:
        code = EXIT_STOPPED
    sys.exit(code if code is not None else EXIT_BAD_INPUT)


if __name__ == "__main__":
    entry()

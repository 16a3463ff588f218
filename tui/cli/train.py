"""`finetty train`: a preset (or `--resume`) into a TUI, headless, probed or multi-GPU run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tui.cli import diagnose, headless, terminal
from tui.launch import add_launch_arguments  # light: argparse/subprocess only


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
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
    add_launch_arguments(train)
    return train


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
        return diagnose.run_probe(
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
    if not args.no_tui and not args.json and terminal.interactive() and not launched_distributed():
        from tui.app import run_tui

        return run_tui(preset, runs_root=root, resume_dir=resume_dir)
    return headless.run_headless(
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
    from engine.parallel.distributed import launched_distributed, rank_from_env
    from engine.runs import rundir

    preset = load_preset(preset_ref)[0] if preset_ref else None
    run_dir = rundir.resolve_run(ref, root, name=preset.name if preset else None)
    # Inside a resumed multi-GPU job rank 0 checks and takes the run's lock; another rank that
    # checked after it would find that lock and refuse its own job. Those ranks never write the
    # run directory, and a refusal on rank 0 ends them through the job's store.
    if not launched_distributed() or rank_from_env() == 0:
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
    if not args.no_tui and not args.json and terminal.interactive() and run_dir is not None:
        from tui.app import run_tui

        log = run_dir / "launcher.log"
        process = start_job(command, log, env)
        print(f"finetty: job pid {process.pid}, its output in {log}", file=sys.stderr)
        # The dashboard watches the run directory; leaving it leaves the job running.
        return run_tui(runs_root=root, watch_dir=run_dir)
    return follow_job(start_job(command, None, env), run_dir)

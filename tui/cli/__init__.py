"""The `finetty` command: the parser and the dispatch; each command family is a module here.

Imports stay lazy: `finetty --help` and `finetty presets` never load torch (every module of this
package imports only argparse-weight code at its top)."""

from __future__ import annotations

import argparse
import sys

from engine.core.errors import EXIT_BAD_INPUT, EXIT_STOPPED, FinettyError
from tui.cli import (
    chat,
    diagnose,
    estimate,
    export,
    import_config,
    presets,
    runs,
    terminal,
    train,
)
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
  finetty import qlora.yml --out my.yaml  an Axolotl or LLaMA-Factory config as a preset
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
    # In the order `finetty --help` lists them.
    train.add_train_parser(sub)
    runs.add_watch_parser(sub)
    presets.add_presets_parser(sub)
    runs.add_runs_parser(sub)
    estimate.add_estimate_parser(sub)
    diagnose.add_doctor_parser(sub)
    chat.add_chat_parser(sub)
    export.add_export_parser(sub)
    import_config.add_import_parser(sub)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and preset_argument(argv[0], parser):
        # `finetty PRESET` (.yaml or name): the TUI, straight to the review screen of that preset.
        try:
            terminal.require_terminal(
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
        if not terminal.interactive():
            parser.print_help()
            return 0
        from engine.runs import rundir
        from tui.app import run_tui

        return run_tui(runs_root=rundir.runs_root())
    try:
        handler = {
            "train": train.cmd_train,
            "watch": runs.cmd_watch,
            "presets": presets.cmd_presets,
            "runs": runs.cmd_runs,
            "estimate": estimate.cmd_estimate,
            "doctor": diagnose.cmd_doctor,
            "chat": chat.cmd_chat,
            "export": export.cmd_export,
            "import": import_config.cmd_import,
        }[args.command]
        return handler(args)
    except FinettyError as error:
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        return EXIT_STOPPED


def entry() -> None:
    try:
        code = main()
    except BrokenPipeError:  # `finetty runs | head`
        code = 0
    except KeyboardInterrupt:
        code = EXIT_STOPPED
    sys.exit(code if code is not None else EXIT_BAD_INPUT)

"""`finetty chat`: a run or a model in the chat pane, or a plain REPL without a terminal."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.core.errors import ConfigError
from tui.cli import terminal
from tui.quiet import quiet_libraries


def add_chat_parser(sub: Any) -> argparse.ArgumentParser:
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
    return chat


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
    if args.no_tui or not terminal.interactive():
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

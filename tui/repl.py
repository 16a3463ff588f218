"""`finetty chat --no-tui`, or chat through a pipe: a plain REPL that streams each reply."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.models.inference import ChatTarget


def chat_repl(args: argparse.Namespace, target: ChatTarget) -> int:
    """``target`` comes checked from cmd_chat; ``args`` carries the generation flags."""
    from engine.models.generate import stream_reply
    from engine.models.inference import load_chat_model

    started = time.monotonic()
    chat = load_chat_model(target, progress=lambda stage: print(f"{stage}...", file=sys.stderr))
    print(f"model ready ({time.monotonic() - started:.0f}s)", file=sys.stderr)
    print(
        f"chatting with {chat.description}; an empty line or Ctrl+D quits, /reset clears.",
        file=sys.stderr,
    )
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": line})
        reply = []
        for delta in stream_reply(
            chat.model,
            chat.tokenizer,
            history,
            chat_template=chat.chat_template,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
        ):
            reply.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
    return 0

"""`finetty presets`: the bundled and user presets, one a line."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_presets_parser(sub: Any) -> argparse.ArgumentParser:
    return sub.add_parser("presets", help="list bundled and user presets")


def cmd_presets(args: argparse.Namespace) -> int:
    from engine.config.presets import list_presets, user_presets_dir

    for info in list_presets():
        print(f"{info.name:36} {info.origin:8} {info.description}")
    print(f"\nuser presets folder: {user_presets_dir()}", file=sys.stderr)
    return 0

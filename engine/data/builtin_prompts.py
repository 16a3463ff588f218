"""The built-in skills as a prompt set for GRPO's exact-match demo.

The same generated rows as ``builtin:finetty-skills`` (builtin_data.py), asked as prompts with
their answer kept in an ``answer`` column for the exact_match reward, and a ``task`` column so
rewards and reports can tell the skills apart. The held-out split is builtin_data's: other
phrasings and word draws, never a training prompt.
"""

from __future__ import annotations

from typing import Any

from engine.config.schema import BUILTIN_DATASET
from engine.core.errors import DatasetError
from engine.data import builtin_data
from engine.data.sources import Records, parse_split, slice_range

SPLITS = ("train", "heldout")


def records(split: str = "train") -> Records:
    """Prompt rows of ``split`` (train or heldout, with optional slicing such as train[:64])."""
    name, start, stop = parse_split(split)
    if name not in SPLITS:
        raise DatasetError(
            f"{BUILTIN_DATASET} as prompts has the splits {', '.join(SPLITS)}; "
            f"'{split}' was asked for.",
            hint="Use split: train (or a slice such as train[:100]).",
        )
    rows = [_record(example) for example in builtin_data.generate(name)]
    keep = slice_range(len(rows), start, stop)
    return Records([rows[i] for i in keep], [i + 1 for i in keep])


def _record(example: builtin_data.Example) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": example.prompt}],
        "answer": example.answer,
        "task": example.task,
    }

"""The rows of an import: each key of the source config, and what it became in the preset.

A source module (axolotl.py, llamafactory.py) fills a ``Mapping`` with one ``Row`` per key it
read; nothing is left out, so a key finetty cannot honour is named with why, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What became of a source key.
MAPPED = "mapped"  # written to the preset
IMPLIED = "implied"  # the source tool's default, written because finetty's differs
SAME = "same"  # what finetty does anyway: nothing to write
EMPTY = "empty"  # blank in the source
UNMAPPED = "no equivalent"  # finetty has no such setting; the note says why
REFUSED = "refused"  # finetty's validation refused the value; the note has its message
STATUSES = (MAPPED, IMPLIED, SAME, EMPTY, UNMAPPED, REFUSED)


@dataclass
class Row:
    source_key: str
    source_value: Any
    status: str
    targets: dict[str, Any] = field(default_factory=dict)
    """Dotted finetty keys (training.learning_rate) and the values this key gave them."""
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "source_key": self.source_key,
            "source_value": self.source_value,
            "status": self.status,
            "targets": dict(self.targets),
            "note": self.note,
        }


class Mapping:
    """The rows of one import, in the order the source keys were read."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def to(self, key: str, value: Any, targets: dict[str, Any], note: str = "") -> None:
        """``key`` becomes the finetty keys in ``targets``."""
        self.rows.append(Row(key, value, MAPPED, dict(targets), note))

    def implied(self, key: str, value: Any, targets: dict[str, Any], note: str) -> None:
        """The source tool's default for ``key`` (absent from the file), made explicit."""
        self.rows.append(Row(key, value, IMPLIED, dict(targets), note))

    def same(self, key: str, value: Any, note: str) -> None:
        self.rows.append(Row(key, value, SAME, note=note))

    def unmapped(self, key: str, value: Any, note: str) -> None:
        status = EMPTY if value is None else UNMAPPED
        self.rows.append(Row(key, value, status, note="" if value is None else note))

    def target_values(self) -> dict[str, Any]:
        """Every finetty key set so far and its value (a later row wins)."""
        values: dict[str, Any] = {}
        for row in self.rows:
            values.update(row.targets)
        return values

    def has_target(self, key: str) -> bool:
        return any(key in row.targets for row in self.rows)


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """{"training.seed": 1} as {"training": {"seed": 1}}."""
    data: dict[str, Any] = {}
    for dotted, value in values.items():
        *sections, last = dotted.split(".")
        target = data
        for section in sections:
            target = target.setdefault(section, {})
        target[last] = value
    return data

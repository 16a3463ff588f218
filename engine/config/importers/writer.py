"""The imported preset as YAML: each key with a comment naming the source key it came from,
and a closing list of what was not imported, all on lines YAML reads back as written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from engine.config.importers.table import IMPLIED, REFUSED, UNMAPPED, Mapping
from engine.config.schema import Preset

# Preset sections in the order a preset lists them.
SECTIONS = ("model", "dataset", "lora", "training", "preference")


def preset_yaml(
    preset: Preset,
    written: dict[str, Any],
    mapping: Mapping,
    label: str,
    path: Path,
    header: dict[str, Any],
) -> str:
    """``written``: the finetty keys the import set (their values are read from ``preset``,
    normalised); ``label``: the source tool's name."""
    origin: dict[str, str] = {}
    for row in mapping.rows:
        unset = "default, unset: " if row.status == IMPLIED else ""
        for key in row.targets:
            origin.setdefault(key, f"{unset}{short(row.source_key)}: {short(row.source_value)}")
    lines = [
        f"# Imported by `finetty import` from the {label} config {short(str(path))}.",
        "# Each key names the source key it came from; what has no equivalent is listed at the end.",
    ]
    lines += [f"{key}: {_scalar(value)}" for key, value in header.items()]
    for key in ("task", "method"):
        if key in written:
            lines.append(_line(key, _value(preset, key), f"{label} {origin[key]}"))
    for section in SECTIONS:
        keys = [key for key in written if key.split(".")[0] == section]
        if not keys:
            continue
        lines += ["", f"{section}:"]
        for key in keys:
            lines.append(
                "  " + _line(key.split(".", 1)[1], _value(preset, key), f"{label} {origin[key]}")
            )
    left = [row for row in mapping.rows if row.status in (REFUSED, UNMAPPED)]
    if left:
        lines += ["", f"# Not imported from {label}:"]
        lines += [
            f"#   {short(row.source_key)}: {short(row.source_value, 40)}  ({short(row.note, 200)})"
            for row in left
        ]
    return "\n".join(lines) + "\n"


def _value(preset: Preset, dotted: str) -> Any:
    value: Any = preset
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _line(key: str, value: Any, comment: str) -> str:
    return f"{key}: {_scalar(value)}  # {comment}"


def _scalar(value: Any) -> str:
    """One value in YAML flow style, on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=False)
    return text.strip().removesuffix("...").strip()


def short(value: Any, limit: int = 60) -> str:
    """A value for a YAML comment: one line of ASCII (YAML also breaks lines at U+2028)."""
    text = json.dumps(value, ensure_ascii=True, default=str)
    text = text[1:-1] if isinstance(value, str) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""An import from start to end: read the config, find its source, map it, validate, write.

A value finetty's validation refuses is taken out of the preset and its row says why (the
validation message), so that the import always ends in a preset that `finetty train` loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.config.importers import axolotl, llamafactory, llamafactory_data
from engine.config.importers.table import REFUSED, Mapping, Row, nested
from engine.config.importers.writer import preset_yaml, short
from engine.config.presets import load_yaml_text, read_yaml, validate
from engine.config.schema import Preset
from engine.core.errors import ConfigError
from engine.core.input_files import regular_file_problem

SOURCES = ("axolotl", "llamafactory")
SOURCE_NAMES = {"axolotl": "Axolotl", "llamafactory": "LLaMA-Factory"}
# Keys that say which tool wrote a config; a config names several of its own tool's.
SIGNATURES = {
    "axolotl": frozenset(
        {"base_model", "datasets", "micro_batch_size", "sequence_len", "num_epochs", "adapter"}
    ),
    "llamafactory": frozenset(
        {"model_name_or_path", "stage", "finetuning_type", "dataset", "template", "cutoff_len"}
    ),
}
MAX_CONFIG_BYTES = 1 << 20
"""Largest config read: the real ones are 1 to 5 KB."""
HINT = "Give the path of an Axolotl or LLaMA-Factory training config (.yaml)."
# A combination refused at a key the import did not write is settled at the keys it names.
RELATED = {"method": ("model.load_in_4bit", "model.load_in_8bit")}


@dataclass
class ImportResult:
    source: str  # one of SOURCES
    path: Path
    rows: list[Row]
    preset: Preset
    yaml_text: str
    dataset_info: Path | None = None  # the dataset_info.json a LLaMA-Factory config was read with

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "config": str(self.path),
            "dataset_info": None if self.dataset_info is None else str(self.dataset_info),
            "rows": [row.as_json() for row in self.rows],
            "preset": self.preset.model_dump(
                mode="json", exclude=set(self.preset.unread_sections())
            ),
        }


def read_config(path: Path) -> dict[str, Any]:
    """The mapping in a config file, read with the guards presets get (regular files only,
    aliases bounded, the line of a YAML error) and a size limit."""
    problem = regular_file_problem(path)
    if problem:
        raise ConfigError(f"{problem}.", hint=HINT)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}).", hint=HINT) from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {size:,} bytes, larger than a training config ({MAX_CONFIG_BYTES:,} at most).",
            hint=HINT,
        )
    return read_yaml(path)[0]


def detect_source(data: dict[str, Any], path: Path) -> str:
    keys = {str(key) for key in data}
    if {"model", "training"} & keys and isinstance(data.get("model"), dict):
        raise ConfigError(
            f"{path}: this is already a finetty preset (it has a model: section).",
            hint=f"Train it as it is: finetty train {path}",
        )
    scores = {source: len(keys & signature) for source, signature in SIGNATURES.items()}
    best = max(scores, key=lambda source: scores[source])
    if scores[best] == 0 or list(scores.values()).count(scores[best]) > 1:
        raise ConfigError(
            f"{path}: neither an Axolotl nor a LLaMA-Factory config (none of "
            f"{', '.join(sorted(SIGNATURES['axolotl']))}, nor of "
            f"{', '.join(sorted(SIGNATURES['llamafactory']))}).",
            hint="Name the source with --from axolotl or --from llamafactory.",
        )
    return best


def import_config(
    path: Path, source: str | None = None, dataset_info: Path | None = None
) -> ImportResult:
    """``dataset_info``: LLaMA-Factory's dataset_info.json; unset, it is looked for where
    LLaMA-Factory would read it."""
    data = read_config(path)
    if source is None:
        source = detect_source(data, path)
    elif source not in SOURCES:
        raise ConfigError(
            f"--from {source}: not a source finetty imports.",
            hint=f"Use one of: {', '.join(SOURCES)}.",
        )
    found = None
    if source == "llamafactory":
        found = dataset_info or llamafactory_data.find(data)
        mapping = llamafactory.map_config(data, llamafactory_data.load(found) if found else None)
    elif dataset_info is not None:
        raise ConfigError(
            "--dataset-info: only LLaMA-Factory configs name their datasets there.",
            hint="Leave --dataset-info out for an Axolotl config.",
        )
    else:
        mapping = axolotl.map_config(data)
    header = {
        "name": preset_name(path),
        "description": f"imported from the {SOURCE_NAMES[source]} config {short(path.name)}",
    }
    preset, written = settle(mapping, header)
    text = preset_yaml(preset, written, mapping, SOURCE_NAMES[source], path, header)
    # The text itself validated, as `finetty train` will read it.
    validate(load_yaml_text(text)[1], source=str(path))
    return ImportResult(source, path, mapping.rows, preset, text, found)


def preset_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip(".-")[:100]
    return name or "imported"


def settle(mapping: Mapping, header: dict[str, Any]) -> tuple[Preset, dict[str, Any]]:
    """The preset of the rows' targets, less every value validation refuses (each refused
    row gets the message); returns it and the targets that stayed."""
    values = mapping.target_values()
    for _ in range(len(values) + 1):
        try:
            preset = Preset.model_validate({**header, **nested(values)})
        except ValidationError as exc:
            refused = _refusals(exc, values)
            if not refused:
                problems = "; ".join(str(error["msg"]) for error in exc.errors())
                raise ConfigError(
                    f"the imported preset does not validate: {problems}",
                    hint="Report this config to finetty: the importer should have named the key.",
                ) from None
            _refuse(mapping, values, refused)
            continue
        # A section the task never reads validates at its defaults, but would say that the
        # preset trains what it does not (a DPO beta on an SFT run).
        unread = {
            key: f"applies to another task than {preset.task} (the task was not imported)"
            for key in values
            if key.split(".")[0] in preset.unread_sections()
        }
        if not unread:
            return preset, values
        _refuse(mapping, values, unread)
    raise ConfigError("the imported preset does not settle.", hint=HINT)  # each pass drops one


def _refuse(mapping: Mapping, values: dict[str, Any], refused: dict[str, str]) -> None:
    """Take the refused keys out of the preset; their rows say why."""
    for key, message in refused.items():
        del values[key]
        for row in mapping.rows:
            if key in row.targets:
                row.status = REFUSED
                row.note = "; ".join(filter(None, (row.note, f"{key}: {message}")))
                del row.targets[key]


def _refusals(exc: ValidationError, values: dict[str, Any]) -> dict[str, str]:
    """The written keys each validation error is about, with its message."""
    refused: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        message = str(error["msg"]).removeprefix("Value error, ")
        for end in range(len(loc), 0, -1):
            prefix = ".".join(loc[:end])
            hits = [key for key in values if key == prefix or key.startswith(prefix + ".")]
            hits = hits or [key for key in RELATED.get(prefix, ()) if key in values]
            if hits:
                refused.update(dict.fromkeys(hits, message))
                break
    return refused

"""LLaMA-Factory's ``dataset:`` names, resolved through its data/dataset_info.json.

A LLaMA-Factory config names datasets by their entries in dataset_info.json (in the folder
``dataset_dir``, "data" by default, relative to where LLaMA-Factory runs). Each entry says
where the rows are (``hf_hub_url`` or ``file_name``) and how they are laid out (``formatting``,
``columns``, ``tags``); finetty reads its formats' own column names, so an entry that renames
them is named as a row to fix in the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config.importers import common
from engine.config.importers.table import Mapping
from engine.core.errors import ConfigError
from engine.core.input_files import regular_file_problem

INFO_FILE = "dataset_info.json"
MAX_INFO_BYTES = 16 << 20  # LLaMA-Factory's own is 11 KB
NOT_READ = (
    "LLaMA-Factory's datasets are entries of its data/dataset_info.json: pass --dataset-info "
    "PATH (or run from the LLaMA-Factory folder), or set dataset.path to the entry's hub id "
    "(hf_hub_url) or file (file_name); until then the preset trains on finetty's built-in dataset"
)
# LLaMA-Factory's DatasetAttr defaults: the column and tag names finetty's formats read too.
ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
}
MESSAGES_COLUMNS = {"messages": "messages", "system": "system"}
MESSAGES_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
}
TEXT_COLUMNS = {"prompt": "text"}
OTHER_HUBS = ("ms_hub_url", "om_hub_url")


@dataclass(frozen=True)
class DatasetInfo:
    path: Path  # the dataset_info.json read
    entries: dict[str, Any]


def find(data: dict[str, Any]) -> Path | None:
    """The dataset_info.json LLaMA-Factory would read for ``data``: in ``dataset_dir`` below
    the current folder, where LLaMA-Factory runs (its examples are run from its root)."""
    folder = data.get("dataset_dir", "data")
    if "dataset" not in data or not isinstance(folder, str):
        return None
    candidate = Path.cwd() / folder / INFO_FILE
    return candidate if candidate.is_file() else None


def load(path: Path) -> DatasetInfo:
    hint = f"Give LLaMA-Factory's data/{INFO_FILE} (a JSON mapping of dataset names)."
    problem = regular_file_problem(path)
    if problem:
        raise ConfigError(f"--dataset-info: {problem}.", hint=hint)
    try:
        if path.stat().st_size > MAX_INFO_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_INFO_BYTES:,} bytes.", hint=hint)
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--dataset-info {path}: no such file.", hint=hint) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}).", hint=hint) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text.", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).", hint=hint) from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested too deeply).", hint=hint) from None
    if not isinstance(entries, dict):
        raise ConfigError(
            f"{path}: a mapping of dataset names, not a {type(entries).__name__}.", hint=hint
        )
    return DatasetInfo(path, entries)


def map_dataset(
    mapping: Mapping, key: str, value: Any, data: dict[str, Any], info: DatasetInfo | None
) -> None:
    names = common.names(value)
    if info is None or not names:
        mapping.unmapped(key, value, NOT_READ)
        return
    first, *rest = names
    entry = info.entries.get(first)
    if not isinstance(entry, dict):
        mapping.unmapped(key, value, f"{first} is not an entry of {info.path}")
    else:
        _entry(mapping, key, value, first, entry, info, data)
    for index, name in enumerate(rest, start=1):
        mapping.unmapped(f"{key}[{index}]", name, common.ONE_DATASET)


def _entry(
    mapping: Mapping,
    key: str,
    value: Any,
    name: str,
    entry: dict[str, Any],
    info: DatasetInfo,
    data: dict[str, Any],
) -> None:
    where = f"{INFO_FILE}[{name}]"
    if isinstance(entry.get("hf_hub_url"), str):
        path, read = entry["hf_hub_url"], "hf_hub_url"
    elif isinstance(entry.get("file_name"), str):
        path, read = str((info.path.parent / entry["file_name"]).absolute()), "file_name"
    else:
        mapping.unmapped(
            key, value, f"{name} is on no Hugging Face hub id or local file, which finetty reads"
        )
        for attribute, setting in entry.items():
            mapping.unmapped(f"{where}.{attribute}", setting, "its dataset was not imported")
        return
    preference = bool(entry.get("ranking")) or data.get("stage") in ("dpo", "kto")
    fmt, columns, tags = _layout(entry, pretraining=data.get("stage") == "pt")
    targets: dict[str, Any] = {"dataset.path": path}
    if fmt is not None and not preference:
        targets["dataset.format"] = fmt
    mapping.to(key, value, targets, f"{name} in {info.path}")
    for attribute, setting in entry.items():
        sub = f"{where}.{attribute}"
        if attribute == read:
            continue
        if attribute == "split":
            common.direct(mapping, sub, setting, "dataset.split")
        elif attribute in OTHER_HUBS or attribute in ("hf_hub_url", "file_name"):
            mapping.same(sub, setting, f"finetty reads the {read} copy")
        elif attribute in ("formatting", "ranking") or (
            preference and attribute in ("columns", "tags")
        ):
            note = "finetty detects the layout of preference data as it loads it"
            mapping.same(sub, setting, note if preference else f"dataset.format: {fmt}")
        elif attribute in ("columns", "tags"):
            _names(mapping, sub, setting, columns if attribute == "columns" else tags, fmt)
        else:
            mapping.unmapped(sub, setting, "finetty has no such dataset setting")


def _layout(entry: dict[str, Any], *, pretraining: bool) -> tuple[str | None, dict, dict]:
    """finetty's format for an entry and the column and tag names that format reads."""
    if pretraining:
        return "text", TEXT_COLUMNS, {}
    if entry.get("formatting", "alpaca") == "alpaca":
        return "alpaca", ALPACA_COLUMNS, {}
    if entry.get("formatting") != "sharegpt":
        return None, {}, {}
    tags = entry.get("tags")
    if isinstance(tags, dict) and tags.get("role_tag") == "role":
        return "messages", MESSAGES_COLUMNS, MESSAGES_TAGS
    return "sharegpt", SHAREGPT_COLUMNS, SHAREGPT_TAGS


def _names(mapping: Mapping, key: str, setting: Any, expected: dict, fmt: str | None) -> None:
    if not isinstance(setting, dict):
        mapping.unmapped(key, setting, "expected a mapping of names")
        return
    for part, name in setting.items():
        sub = f"{key}.{part}"
        if expected.get(part) == name:
            mapping.same(sub, name, f"the name finetty's {fmt} format reads")
        elif part in expected:
            mapping.unmapped(
                sub, name, f"finetty's {fmt} format reads {expected[part]!r}: rename it in the data"
            )
        else:
            mapping.unmapped(sub, name, f"finetty's {fmt} format has no {part}")

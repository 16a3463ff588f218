"""Finding, reading, overriding and saving presets, with errors that point at the YAML line.

Every problem in a file is reported at once, each as ``file:line key: what is wrong``, with a
"did you mean" for misspelt keys. No torch here.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from engine.config.grpo import PRESET_DIR
from engine.config.schema import Preset
from engine.core.errors import ConfigError
from engine.core.input_files import regular_file_problem
from engine.core.terminal_text import printable

SET_LINE = 0  # in the lines map: the key was set by --set
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "presets"


def user_presets_dir() -> Path:
    configured = os.environ.get("FINETTY_PRESETS")
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "finetty" / "presets"


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    origin: str  # "bundled" or "user"
    description: str


def list_presets() -> list[PresetInfo]:
    """Bundled then user presets; a user preset with a bundled name shadows the bundled one."""
    found: dict[str, PresetInfo] = {}
    for origin, folder in (("bundled", BUNDLED_DIR), ("user", user_presets_dir())):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = PresetInfo(path.stem, path, origin, _description(path))
    return sorted(found.values(), key=lambda info: (info.origin != "bundled", info.name))


def _description(path: Path) -> str:
    if regular_file_problem(path):
        return "(unreadable)"
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))[1]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError):
        return "(unreadable)"
    if isinstance(data, dict):
        return printable(str(data.get("description") or ""))  # shown as is by `finetty presets`
    return "(not a preset)"


def find_preset(name_or_path: str) -> Path:
    """A preset by file path, or by name among the user and bundled presets."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        problem = regular_file_problem(path)
        if problem:
            raise ConfigError(f"Preset: {problem}.", hint="Give the path of a preset .yaml file.")
        if path.is_file():
            return path
        raise ConfigError(
            f"Preset file not found: {name_or_path}",
            hint="Check the path, or run `finetty presets`.",
        )
    by_name = {info.name: info.path for info in list_presets()}
    if name_or_path in by_name:
        return by_name[name_or_path]
    close = difflib.get_close_matches(name_or_path, list(by_name), n=3)
    hint = f"Did you mean: {', '.join(close)}?" if close else "Run `finetty presets` to list them."
    raise ConfigError(f"No preset named '{name_or_path}'.", hint=hint)


def load_preset(name_or_path: str, overrides: list[str] | None = None) -> tuple[Preset, Path]:
    path = find_preset(name_or_path)
    data, lines = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
        for item in overrides:  # a problem with an overridden key points at --set, not the file
            keys = tuple(parse_override(item)[0])
            lines = {key: line for key, line in lines.items() if key[: len(keys)] != keys}
            for end in range(1, len(keys) + 1):  # --set a.b.c adds a (and a.b) when new
                lines.setdefault(keys[:end], SET_LINE)
    return validate(data, source=str(path), lines=lines), path


def run_config(run_dir: Path) -> Preset:
    """The resolved config a run saved (its config.yaml), validated like any preset."""
    source = run_dir / "config.yaml"
    data, lines = read_yaml(source)
    return validate(data, source=str(source), lines=lines)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The mapping in a YAML file, and the line of every key (for error messages)."""
    problem = regular_file_problem(path)
    if problem:
        raise ConfigError(f"{problem}.", hint="Give the path of a preset .yaml file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded).",
            hint="Save the preset as UTF-8.",
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        node, data = load_yaml_text(text)
    except AliasBombError as exc:
        raise ConfigError(f"{path}: refused: {exc}.", hint=ALIAS_HINT) from None
    except RecursionError:
        raise ConfigError(
            f"{path}: not valid YAML (nested too deeply).", hint="Check brackets and indentation."
        ) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int literal past 4300 digits
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{where}: not valid YAML ({problem}).", hint="Check indentation and quoting."
        ) from None
    if data is None:
        raise ConfigError(
            f"{path}: the preset is empty.", hint="See presets/smollm2-demo.yaml for an example."
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a preset must be a mapping of sections (model:, dataset:, ...), not a {type(data).__name__}.",
            hint="See presets/smollm2-demo.yaml for an example.",
        )
    lines: dict[tuple[str, ...], int] = {}
    duplicates: list[str] = []
    _collect_lines(node, (), lines, duplicates)
    if duplicates:
        # YAML keeps the last of two equal keys silently: a second training: section would
        # quietly replace the first.
        raise ConfigError(
            f"{path}: duplicate key{'s' if len(duplicates) > 1 else ''} "
            + ", ".join(duplicates[:5])
            + ".",
            hint="Each key may appear once per section; merge the two into one.",
        )
    return data, lines


MAX_YAML_VALUES = 100_000
"""Most values a preset (or one --set value) may expand to once aliases are followed.

A real preset has about a hundred. Aliases (``*name``) share a node, so nine levels of ten-key
mappings that alias the level below are 870 bytes of text and 10**9 values in memory."""
ALIAS_HINT = "Write the values out instead of repeating them through &anchors and *aliases."


class AliasBombError(ValueError):
    """YAML whose aliases expand past MAX_YAML_VALUES values, or refer to themselves."""


def load_yaml_text(text: str) -> tuple[yaml.Node | None, Any]:
    """Parse YAML safely (``safe_load`` types) with aliases bounded; returns (node, data).

    The node graph is composed first (aliases stay shared there, so this is cheap), its
    expanded size counted, and only then are Python values built from it.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None, None
    _check_expanded_size(node)
    return node, yaml.constructor.SafeConstructor().construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}  # node id -> values it expands to
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise AliasBombError(
                    f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values "
                    "(a preset has about a hundred)"
                )
            continue
        if id(node) in open_nodes:
            raise AliasBombError("a YAML alias refers to the value that contains it")
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise AliasBombError("a YAML alias refers to the value that contains it")
            stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _collect_lines(
    node: yaml.Node | None,
    prefix: tuple[str, ...],
    out: dict[tuple[str, ...], int],
    duplicates: list[str],
) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            line = key_node.start_mark.line + 1
            if key in out and isinstance(key_node, yaml.ScalarNode):
                duplicates.append(f"{'.'.join(key)} (lines {out[key]} and {line})")
            out[key] = line
            _collect_lines(value_node, key, out, duplicates)


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"--set {item!r}: expected KEY=VALUE.",
            hint="For example: --set training.learning_rate=1e-4",
        )
    try:
        value = load_yaml_text(raw)[1] if raw.strip() else ""
    except AliasBombError as exc:
        raise ConfigError(f"--set {key.strip()}: refused: {exc}.", hint=ALIAS_HINT) from None
    except (yaml.YAMLError, RecursionError, ValueError):  # not YAML: taken as the text typed
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys; unknown keys are left for validation to report with a suggestion."""
    result = _deep_copy(data)
    for item in overrides:
        keys, value = parse_override(item)
        target = result
        for key in keys[:-1]:
            child = target.get(key)
            if not isinstance(child, dict):  # a scalar where a section belongs holds no keys
                child = {}
                target[key] = child
            target = child
        if _is_section(keys) and not isinstance(value, dict):
            example = next(iter(_section_model(keys).model_fields))
            raise ConfigError(
                f"--set {item}: {'.'.join(keys)} is a section of keys; "
                "a single value would replace the whole section.",
                hint=f"Set one key inside it, e.g. --set {'.'.join(keys)}.{example}=...",
            )
        current = target.get(keys[-1])
        if isinstance(value, dict) and isinstance(current, dict):
            _merge_into(current, value)  # the section's other keys stay as the preset set them
        else:
            target[keys[-1]] = value
    return result


def _merge_into(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def _section_model(keys: list[str]) -> type[BaseModel] | None:
    """The schema section that ``keys`` names (e.g. ["training"]), or None for a plain key."""
    model: type[BaseModel] = Preset
    for part in keys:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _is_section(keys: list[str]) -> bool:
    return _section_model(keys) is not None


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data


def validate(data: dict[str, Any], *, source: str = "preset", lines: dict | None = None) -> Preset:
    try:
        # Reward files are named relative to the preset (the current folder without one).
        return Preset.model_validate(data, context={PRESET_DIR: Path(source).parent})
    except ValidationError as exc:
        problems = [_describe(error, source, lines or {}) for error in exc.errors()]
        raise ConfigError(
            f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in the preset:\n"
            + "\n".join(f"  - {problem}" for problem in problems),
            hint="Fix the keys above; `finetty presets` lists working examples.",
            problems=problems,
        ) from None


def hardware_problems(preset: Preset, *, cuda: bool, source: str = "preset") -> list[str]:
    """``Preset.hardware_problems`` worded as validation words its problems (``SOURCE KEY: ...``)."""
    return [
        f"{source} {'.'.join(key)}: {message}"
        for key, message in preset.hardware_problems(cuda=cuda)
    ]


def check_hardware(preset: Preset, *, cuda: bool, source: str = "preset") -> None:
    """Refuse, before anything is created or loaded, what this machine cannot run."""
    problems = hardware_problems(preset, cuda=cuda, source=source)
    if problems:
        raise ConfigError(
            f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''} on this machine:\n"
            + "\n".join(f"  - {problem}" for problem in problems),
            hint="Change the keys above, or run on a machine with a CUDA GPU.",
            problems=problems,
        )


def _describe(error: dict[str, Any], source: str, lines: dict[tuple[str, ...], int]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    # Pydantic names union members in the location (e.g. "int", "literal['auto']"); drop them.
    kind = error["type"]
    if kind != "extra_forbidden":  # an unknown key may well be called "int" or "list"
        loc = tuple(
            part
            for part in loc
            if not part.startswith(("literal[", "function-")) and part not in _TYPE_TAGS
        )
    key = ".".join(loc) or "(top level)"
    line = _line_for(loc, lines)
    if line == SET_LINE:
        where = f"--set {key}"
    else:
        where = f"{source}:{line} {key}" if line else f"{source} {key}"
    if kind == "extra_forbidden":
        return f"{where}: unknown key{_suggest(loc)}"
    if kind == "missing":
        return f"{where}: required key is missing"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    given = error.get("input")
    if kind not in ("model_type", "combination") and not isinstance(given, dict):
        message += f" (got {_shown(given)})"
    return f"{where}: {message}"


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return (
            f"a {value.bit_length()}-bit integer"
            if isinstance(value, int)
            else "an unprintable value"
        )
    return text if len(text) <= 80 else text[:77] + "..."


_TYPE_TAGS = {
    "int",
    "str",
    "float",
    "bool",
    "list[str]",
    "list",
    "dict",
    "constrained-int",
    "function-after",
}


def _line_for(loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _suggest(loc: tuple[str, ...]) -> str:
    model: type[BaseModel] = Preset
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid keys here: {', '.join(model.model_fields)}"


def to_yaml(preset: Preset) -> str:
    """The resolved config, every default filled in, loadable again by `finetty train`; the
    sections of other tasks are left out (an SFT run's config lists no GRPO rewards)."""
    data = preset.model_dump(mode="json")
    for section in preset.unread_sections():
        del data[section]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

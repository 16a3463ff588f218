"""The draft preset the wizard screens edit, validated by the engine exactly as the CLI does.

Values typed into a field are parsed like ``--set KEY=VALUE`` (YAML scalars) and the draft runs
through ``engine.config.presets.validate``, so each field shows the CLI's own message for its key.
The typed text is kept per key, so going back and forward never loses what was entered, even
when it does not parse yet.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config.presets import (
    find_preset,
    hardware_problems,
    parse_override,
    read_yaml,
    user_presets_dir,
    validate,
)
from engine.config.schema import Preset
from engine.core.errors import ConfigError, FinettyError
from engine.core.terminal_text import printable
from engine.data.templates import SPECIAL_NAMES, resolve_chat_template
from tui import wizard_device

SOURCE = "preset"
_PROBLEM = re.compile(rf"^{SOURCE} (\S+): (.*)$", re.DOTALL)
LIST_KEYS = ("lora.target_modules", "lora.modules_to_save", "export.formats")


def defaults() -> dict[str, Any]:
    return Preset().model_dump(mode="json")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def as_text(value: Any) -> str:
    """How a value shows in an input: YAML flow style, with None as an empty field, and control
    characters written out (a preset's escape codes are shown, never sent to the terminal)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return printable(value)
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def parse_text(key: str, text: str) -> Any:
    """Parse typed text as ``--set key=text`` does; empty unsets an optional key (None)."""
    if not text.strip() and flatten(defaults()).get(key, "") is None:
        return None
    value = parse_override(f"{key}={text}")[1]
    if key in LIST_KEYS and isinstance(value, str) and "," in value:
        value = [part.strip() for part in value.split(",") if part.strip()]
    return value


@dataclass
class WizardState:
    """The draft (nested dict), where it came from, and the text typed into each field."""

    data: dict[str, Any] = field(default_factory=defaults)
    base: dict[str, Any] = field(default_factory=defaults)
    source: Path | None = None  # the preset file it was loaded from or saved to
    texts: dict[str, str] = field(default_factory=dict)
    cuda: bool | None = None  # whether a CUDA GPU is usable; None: ask this machine

    @classmethod
    def from_file(cls, name_or_path: str | Path) -> WizardState:
        """A draft from a preset file (or name): every field filled, defaults included."""
        path = find_preset(str(name_or_path))
        data, _lines = read_yaml(path)
        try:
            resolved = validate(data, source=str(path)).model_dump(mode="json")
        except ConfigError:
            resolved = _merge(defaults(), data)  # still editable: the fields show the problems
        return cls(data=resolved, base=_merge(defaults(), resolved), source=path)

    def get(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    def text(self, key: str) -> str:
        return self.texts.get(key, as_text(self.get(key)))

    def set(self, key: str, value: Any) -> None:
        parts = key.split(".")
        node = self.data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        self.texts.pop(key, None)

    def set_text(self, key: str, text: str) -> None:
        try:
            value = parse_text(key, text)
        except ConfigError:
            value = text
        self.set(key, value)
        self.texts[key] = text

    def problems(self) -> list[str]:
        """Every problem, worded as the CLI words it (``preset KEY: message``), including what
        this machine cannot run (QLoRA without CUDA), from the function `finetty train` asks."""
        found: list[str] = []
        try:
            preset = validate(self.data, source=SOURCE)
        except ConfigError as exc:
            found = list(exc.problems)
        else:
            cuda = cuda_here() if self.cuda is None else self.cuda
            found = hardware_problems(preset, cuda=cuda, source=SOURCE)
        template = self.get("dataset.chat_template")
        if isinstance(template, str) and template.strip().lower() not in SPECIAL_NAMES:
            try:
                resolve_chat_template(None, template)
            except FinettyError as exc:
                found.append(f"{SOURCE} dataset.chat_template: {exc.message}")
        return found

    def field_errors(self) -> dict[str, str]:
        """Problems by dotted key; a problem inside a list item goes to the list's key."""
        errors: dict[str, str] = {}
        known = flatten(defaults())
        for problem in self.problems():
            match = _PROBLEM.match(problem)
            key, message = (match.group(1), match.group(2)) if match else ("", problem)
            while key and key not in known and "." in key:
                key = key.rsplit(".", 1)[0]
            errors.setdefault(key, message)
        return errors

    def preset(self) -> Preset:
        """The validated preset; ConfigError lists every problem."""
        problems = self.problems()
        if problems:
            raise ConfigError(
                f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the preset:\n"
                + "\n".join(f"  - {p}" for p in problems),
                hint="Fix the fields marked in red.",
                problems=problems,
            )
        return validate(self.data, source=SOURCE)

    def changes(self) -> dict[str, Any]:
        """Keys whose value differs from the base (the loaded preset, or the defaults)."""
        base, now = flatten(self.base), flatten(self.data)
        return {key: value for key, value in now.items() if base.get(key) != value}

    def command(self) -> str:
        """The equivalent `finetty train` command, or a hint to save first."""
        if self.source is None:
            return "finetty train PRESET.yaml   (save as preset first: ctrl+s)"
        parts = ["finetty", "train", shlex.quote(_preset_ref(self.source))]
        for key, value in self.changes().items():
            parts += [
                "--set",
                shlex.quote(f"{key}={as_text(value) if value is not None else 'null'}"),
            ]
        return " ".join(parts)

    def save(self, preset: Preset, path: Path) -> None:
        from engine.config.presets import to_yaml

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_yaml(preset), encoding="utf-8")
        self.source = path
        self.base = preset.model_dump(mode="json")
        self.data = _merge(defaults(), self.base)


def cuda_here() -> bool:
    """Whether the wizard's device (the one its fit line estimates for) is a CUDA GPU."""
    return wizard_device.device_spec() is not None


def save_path(name: str) -> Path:
    return user_presets_dir() / f"{name}.yaml"


def _preset_ref(path: Path) -> str:
    """A bundled or user preset by name (as `finetty presets` lists it), else by path."""
    from engine.config.presets import list_presets

    for info in list_presets():
        if info.path.resolve() == path.resolve():
            return info.name
    return str(path)


def _merge(base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out

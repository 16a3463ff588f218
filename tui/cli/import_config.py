"""`finetty import`: an Axolotl or LLaMA-Factory config as a finetty preset, with the table of
what each key became. The table (or --json) goes to stdout, progress and warnings to stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config.importers import ImportResult, Row

HINT = "Give the path of an Axolotl or LLaMA-Factory training config (.yaml)."


def add_import_parser(sub: Any) -> argparse.ArgumentParser:
    command = sub.add_parser(
        "import",
        help="turn an Axolotl or LLaMA-Factory config into a finetty preset",
        description="Turn an Axolotl or LLaMA-Factory training config into a finetty preset, "
        "and list each key: what it became, or why it has no equivalent.",
    )
    command.add_argument(
        "config", metavar="CONFIG.yaml", help="the Axolotl or LLaMA-Factory config"
    )
    command.add_argument(
        "--out",
        metavar="PRESET.yaml",
        help="where to write the preset (default: CONFIG-finetty.yaml in this folder)",
    )
    command.add_argument(
        "--from",
        dest="source",
        choices=("axolotl", "llamafactory"),
        help="the tool that wrote CONFIG (default: told from its keys)",
    )
    command.add_argument(
        "--dataset-info",
        metavar="PATH",
        help="LLaMA-Factory's data/dataset_info.json, which names its datasets (default: "
        "DATASET_DIR/dataset_info.json below this folder, as LLaMA-Factory reads it)",
    )
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command.add_argument("--force", action="store_true", help="replace an existing --out file")
    return command


def cmd_import(args: argparse.Namespace) -> int:
    from engine.config.importers import import_config

    config = Path(args.config).expanduser()
    if not config.exists():
        from engine.core.errors import ConfigError

        raise ConfigError(f"{config}: no such file.", hint=HINT)
    out = Path(args.out).expanduser() if args.out else Path(f"{config.stem}-finetty.yaml")
    check_target(out, config, force=args.force)  # before any work, so a refusal costs nothing
    info = Path(args.dataset_info).expanduser() if args.dataset_info else None
    result = import_config(config, args.source, info)
    if result.dataset_info is not None:
        print(f"import: dataset names read from {result.dataset_info}", file=sys.stderr)
    write_preset(out, result.yaml_text, force=args.force)
    if args.json:
        print(json.dumps({**result.as_json(), "preset_file": str(out)}, indent=2, default=str))
    else:
        print_table(result)
    for warning in warnings(result):
        print(f"import: {warning}", file=sys.stderr)
    print(
        f"import: wrote {out}; next: finetty estimate {out}, then finetty train {out}",
        file=sys.stderr,
    )
    return 0


def warnings(result: ImportResult) -> list[str]:
    """What the user must know before training the preset: refused values, a config whose
    dataset was not imported (the preset then names finetty's built-in one), remote code."""
    from engine.config.importers.table import MAPPED, REFUSED
    from engine.config.schema import BUILTIN_DATASET
    from engine.core.terminal_text import printable

    found: list[str] = []
    refused = [printable(row.source_key) for row in result.rows if row.status == REFUSED]
    if refused:
        found.append(
            f"finetty's validation refused {', '.join(refused)}: the preset leaves them at "
            "finetty's defaults (the table says why)"
        )
    named = [row for row in result.rows if row.source_key in ("dataset", "datasets[0].path")]
    if result.preset.dataset.path == BUILTIN_DATASET and not any(
        row.status == MAPPED for row in named
    ):
        found.append(
            f"no dataset was imported: the preset trains on {BUILTIN_DATASET} until you set "
            "dataset.path (the table says why)"
        )
    if result.preset.model.trust_remote_code:
        # A config from the web should not turn on code execution unnoticed.
        found.append(
            "the config turns on model.trust_remote_code: training will run Python code from "
            f"{printable(result.preset.model.name_or_path)}; set it to false unless you trust "
            "that repository"
        )
    return found


def check_target(out: Path, config: Path, *, force: bool) -> None:
    from engine.core.errors import ConfigError
    from engine.core.input_files import file_kind

    kind = file_kind(out)
    if kind is not None:
        raise ConfigError(f"--out {out} is {kind}, not a file.", hint="Name a .yaml file to write.")
    if out.exists() and config.exists() and out.resolve() == config.resolve():
        raise ConfigError(
            f"--out {out} is the config being imported.", hint="Write the preset to another file."
        )
    if out.exists() and not force:
        raise ConfigError(
            f"--out {out} already exists.", hint="Pass --force to replace it, or name another file."
        )


def write_preset(out: Path, text: str, *, force: bool) -> None:
    """Written whole or not at all: a temporary file beside it, renamed over it."""
    from engine.core.errors import ConfigError

    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("x", encoding="utf-8") as handle:
            handle.write(text)
        if force:
            os.replace(temporary, out)
        else:
            os.link(temporary, out)  # fails if the file appeared meanwhile: never replaced
    except FileExistsError:
        raise ConfigError(
            f"--out {out} already exists.", hint="Pass --force to replace it, or name another file."
        ) from None
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot be written ({exc.strerror}).") from None
    finally:
        temporary.unlink(missing_ok=True)


def print_table(result: ImportResult) -> None:
    """A rich table on a terminal; tab-separated plain lines in a pipe or file."""
    title = f"{result.path} ({result.source})"
    cells = [_cells(row) for row in result.rows]
    if not sys.stdout.isatty():
        print(f"# {title}")
        print("\t".join(("key", "value", "status", "finetty", "note")))
        for row in cells:
            print("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left")
    for header in ("key", "value", "status", "finetty", "note"):
        table.add_column(header, overflow="fold")
    styles = {"mapped": "green", "implied": "cyan", "refused": "red", "no equivalent": "yellow"}
    for row, status in zip(cells, (row.status for row in result.rows), strict=True):
        table.add_row(*(Text(cell) for cell in row), style=styles.get(status, ""))
    Console(highlight=False).print(table)


def _cells(row: Row) -> tuple[str, str, str, str, str]:
    from engine.core.terminal_text import printable

    targets = ", ".join(f"{key}: {_shown(value, 200)}" for key, value in row.targets.items())
    cells = (row.source_key, _shown(row.source_value), row.status, targets, row.note)
    # Source keys and values are the file's text: an escape code in them is shown, never obeyed,
    # and a tab or newline would break the plain table's columns.
    return tuple(printable(cell).replace("\t", " ").replace("\n", "\\n") for cell in cells)  # type: ignore[return-value]


def _shown(value: object, limit: int = 60) -> str:
    text = "" if value is None else json.dumps(value, default=str, ensure_ascii=False)
    text = text[1:-1] if isinstance(value, str) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."

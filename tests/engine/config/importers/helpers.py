"""The real configs under tests/data/imports, imported."""

from __future__ import annotations

from pathlib import Path

from engine.config.importers import ImportResult, Row, import_config

FIXTURES = Path(__file__).resolve().parents[3] / "data" / "imports"


def imported(relative: str) -> ImportResult:
    return import_config(FIXTURES / relative)


def rows_by_key(result: ImportResult) -> dict[str, Row]:
    return {row.source_key: row for row in result.rows}

"""`finetty export`: results on stdout, progress on stderr, exit 2 for a target in the way."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from engine.core.errors import FinettyError
from tests.engine.export.test_export import make_run
from tui.cli.export import add_export_parser, cmd_export


def run_export(argv: list[str]) -> int:
    """What tui.cli.main does for a subcommand: parse, run, map typed errors to exit codes."""
    parser = argparse.ArgumentParser(prog="finetty")
    add_export_parser(parser.add_subparsers(dest="command"))
    try:
        return cmd_export(parser.parse_args(["export", *argv]))
    except FinettyError as error:
        print(error, file=__import__("sys").stderr)
        return error.exit_code


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)


def test_export_adapter_reports_paths_and_sizes(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_export([str(run_dir), "--format", "adapter", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("adapter") and str(tmp_path / "adapter") in out and "MiB" in out
    assert "adapter: verifying" in err and "export: done" in err


def test_existing_target_without_force_is_exit_2_and_untouched(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert run_export([str(run_dir), "--format", "adapter", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_json_output_and_latest(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = run_dir.parent.parent
    argv = [
        "latest",
        "--run-dir",
        str(root),
        "--format",
        "adapter",
        "--out",
        str(tmp_path),
        "--json",
    ]
    assert run_export(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["run_dir"] == str(run_dir)
    assert [item["kind"] for item in result["items"]] == ["adapter"]


def test_bad_quant_is_exit_2(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(run_dir), "--format", "gguf", "--quant", "q9_z", "--out", str(tmp_path / "o")]
    assert run_export(argv) == 2
    assert "Unknown GGUF quantization: q9_z" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

"""CLI edge cases: full-screen commands without a terminal, and `finetty chat` flags.

Without a terminal, `finetty PRESET.yaml` and `finetty watch` used to start the TUI anyway: escape
codes into the file, and a process that never exits. Bad chat flags used to load the model first
and then raise a traceback (or decode greedily without a word)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.export.test_export import make_run
from tui.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def wide_panels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # error panels on one line, so phrases can be matched


def finetty(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`finetty ARGV < /dev/null > pipe`, as from cron, nohup or a script."""
    code = "import sys; from tui.cli import entry; sys.argv[0] = 'finetty'; entry()"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env=os.environ | {"COLUMNS": "1000"},
    )


def refused(result: subprocess.CompletedProcess) -> str:
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text and "\x1b[?1049h" not in text  # no alternate screen, no TUI
    return text


def test_preset_without_a_terminal_says_how_to_train_headless() -> None:
    text = refused(finetty("presets/smollm2-demo.yaml"))
    assert "needs a terminal" in text and "input and output are not one" in text
    assert "finetty train presets/smollm2-demo.yaml --no-tui" in text


def test_missing_preset_without_a_terminal_is_named(tmp_path: Path) -> None:
    text = refused(finetty(str(tmp_path / "nope.yaml")))
    assert "not found" in text and "nope.yaml" in text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    run = make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)
    started = {"type": "run_started", "v": 1, "name": "tiny"}
    (run / "events.jsonl").write_text(json.dumps(started) + "\n", encoding="utf-8")
    return run


def test_watch_without_a_terminal_points_to_runs_and_the_log(run_dir: Path) -> None:
    text = refused(finetty("watch", str(run_dir)))
    assert "needs a terminal" in text and "finetty runs" in text
    assert str(run_dir / "log.txt") in text


# -- chat flags: refused before any model loads --------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be from 1 to 8192"),
        (["--max-new-tokens", "-5"], "--max-new-tokens -5: must be from 1 to 8192"),
        (["--top-p", "-1"], "--top-p -1.0: must be above 0 and at most 1"),
        (["--top-p", "2"], "--top-p 2.0: must be above 0 and at most 1"),
        (["--temperature", "-1"], "--temperature -1.0: must be a number from 0"),
        (["--temperature", "nan"], "--temperature nan: must be a number from 0"),
        (["--temperature", "inf"], "--temperature inf: must be a number from 0"),
    ],
)
def test_bad_chat_flags_are_refused_before_loading(
    flags: list[str], fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import engine.models.inference

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(engine.models.inference, "load_chat_model", never)
    assert main(["chat", "embedded:smollm2-135m-instruct", "--no-tui", *flags]) == 2
    err = capsys.readouterr().err
    assert fragment in " ".join(err.split()), err
    assert "Traceback" not in err


def test_adapter_with_a_run_is_refused(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", str(run_dir), "--adapter", "/nonexistent", "--no-tui"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--adapter /nonexistent cannot be used with a run" in err


def test_missing_adapter_folder_is_named(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", str(tiny_model_dir), "--adapter", "/nonexistent", "--no-tui"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--adapter /nonexistent does not exist" in err


def test_adapter_with_an_edited_rank_is_a_short_message(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for item in (run_dir / "final").iterdir():
        (adapter / item.name).write_bytes(item.read_bytes())
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 16  # trained with r=4
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    code = main(["chat", str(tiny_model_dir), "--adapter", str(adapter), "--no-tui"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.replace("─", "")) < 3000 and "Traceback" not in err  # was 90 KB
    flat = " ".join(err.split())
    assert "does not fit the model" in flat and "size mismatch" in flat
    assert "adapter_config.json" in flat


def test_the_repl_shows_each_loading_stage(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # nothing to say: the REPL ends at once
    assert main(["chat", str(tiny_model_dir), "--no-tui"]) == 0
    err = capsys.readouterr().err
    assert f"loading {tiny_model_dir}" in err and "on the cpu..." in err
    assert "model ready (" in err

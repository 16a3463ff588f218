"""`finetty import`: the table on stdout, the preset written once, bad input as exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.presets import load_preset
from tui.cli import main

ROOT = Path(__file__).resolve().parents[3]
QLORA = ROOT / "tests" / "data" / "imports" / "axolotl" / "qlora.yml"
LF_SFT = ROOT / "tests" / "data" / "imports" / "llamafactory" / "llama3_lora_sft.yaml"


def test_table_on_stdout_and_the_preset_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qlora.yaml"
    assert main(["import", str(QLORA), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    lines = stdout.splitlines()
    assert lines[1] == "key\tvalue\tstatus\tfinetty\tnote"  # plain columns in a pipe
    assert "micro_batch_size\t2\tmapped\ttraining.per_device_train_batch_size: 2\t" in lines
    assert any(line.startswith("evals_per_epoch\t4\tno equivalent\t\t") for line in lines)
    assert f"wrote {out}" in stderr and "finetty estimate" in stderr
    preset, _ = load_preset(str(out))  # what `finetty train OUT --no-tui` validates
    assert (preset.method, preset.lora.r, preset.training.optim) == (
        "qlora",
        32,
        "paged_adamw_32bit",
    )
    assert "# Axolotl micro_batch_size: 2" in out.read_text()


def test_default_out_is_beside_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["import", str(LF_SFT)]) == 0
    assert load_preset("llama3_lora_sft-finetty.yaml")[0].model.max_seq_length == 1024


def test_never_over_an_existing_file_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.yaml"
    out.write_text("keep: me\n")
    assert main(["import", str(QLORA), "--out", str(out)]) == 2
    stdout, stderr = capsys.readouterr()
    assert "already exists" in stderr and "--force" in stderr and stdout == ""
    assert out.read_text() == "keep: me\n"
    assert main(["import", str(QLORA), "--out", str(out), "--force"]) == 0
    assert load_preset(str(out))[0].method == "qlora"
    assert [path.name for path in tmp_path.iterdir()] == ["mine.yaml"]  # no temporary left


def test_never_over_the_config_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(QLORA.read_text())
    assert main(["import", str(config), "--out", str(config), "--force"]) == 2
    assert "the config being imported" in capsys.readouterr().err
    assert config.read_text() == QLORA.read_text()


def test_json_for_machines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.yaml"
    assert main(["import", str(LF_SFT), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "llamafactory" and report["preset_file"] == str(out)
    rows = {row["source_key"]: row for row in report["rows"]}
    assert rows["cutoff_len"]["targets"] == {"model.max_seq_length": 1024}
    assert rows["dataset"]["status"] == "no equivalent"
    assert report["preset"]["lora"]["r"] == 8


def test_from_overrides_detection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "odd.yaml"
    config.write_text("learning_rate: 0.001\n")  # no key says which tool wrote it
    assert main(["import", str(config), "--out", str(tmp_path / "a.yaml")]) == 2
    assert "--from" in capsys.readouterr().err
    out = tmp_path / "b.yaml"
    assert main(["import", str(config), "--out", str(out), "--from", "llamafactory"]) == 0
    assert load_preset(str(out))[0].training.learning_rate == 0.001


def test_rich_table_on_a_terminal_honours_no_color(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yml"
    # A key that is rich markup and one holding an escape code: both shown as typed.
    config.write_text('base_model: m\nadapter: lora\n"[bold]x[/bold]": 1\n"k\\x1b[2J": 2\n')
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(["import", str(config), "--out", str(tmp_path / "a.yaml")]) == 0
    coloured = capsys.readouterr().out
    assert "\x1b[" in coloured and "│" in coloured
    assert "[bold]x[/bold]" in coloured and "k\\x1b[2J" in coloured and "\x1b[2J" not in coloured
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["import", str(config), "--out", str(tmp_path / "b.yaml")]) == 0
    plain = capsys.readouterr().out
    assert "no equivalent" in plain and "\x1b[3" not in plain  # no colour codes


def test_an_escape_code_in_a_key_is_shown_not_obeyed_in_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yml"
    config.write_text('base_model: m\nadapter: lora\n"k\\x1b[2J\\tz": 2\n')
    assert main(["import", str(config), "--out", str(tmp_path / "a.yaml")]) == 0
    stdout = capsys.readouterr().out
    assert "\x1b" not in stdout and "k\\x1b[2J z\t2\tno equivalent" in stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.yml", "no such file"),
        (lambda tmp: tmp, "is a folder"),
        (lambda tmp: _write(tmp, "base_model: m\n  bad: indent\n"), "c.yml:2: not valid YAML"),
        (lambda tmp: _write(tmp, "foo: 1\n"), "neither an Axolotl nor a LLaMA-Factory"),
        (lambda tmp: _write(tmp, "model:\n  name_or_path: m\n"), "already a finetty preset"),
    ],
)
def test_bad_input_is_exit_2_without_traceback(tmp_path: Path, make, message: str) -> None:
    config = make(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "import", str(config), "--out", str(tmp_path / "o.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and not (tmp_path / "o.yaml").exists()


def test_import_never_loads_torch(tmp_path: Path) -> None:
    code = (
        "import sys, json\nfrom tui.cli import main\n"
        f"main(['import', {str(QLORA)!r}, '--out', {str(tmp_path / 'o.yaml')!r}])\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not {"torch", "transformers", "textual"} & loaded


def _write(folder: Path, text: str) -> Path:
    path = folder / "c.yml"
    path.write_text(text)
    return path


def test_dataset_info_names_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = LF_SFT.parent / "data" / "dataset_info.json"
    out = tmp_path / "p.yaml"
    assert main(["import", str(LF_SFT), "--out", str(out), "--dataset-info", str(info)]) == 0
    assert f"dataset names read from {info}" in capsys.readouterr().err
    assert load_preset(str(out))[0].dataset.path.endswith("identity.json")


def test_a_dataset_not_imported_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", str(LF_SFT), "--out", str(tmp_path / "p.yaml")]) == 0
    err = capsys.readouterr().err
    assert "no dataset was imported" in err and "builtin:finetty-skills" in err
    assert main(["import", str(QLORA), "--out", str(tmp_path / "q.yaml")]) == 0
    assert "no dataset was imported" not in capsys.readouterr().err


def test_refused_values_are_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yml"
    config.write_text("base_model: m\nadapter: lora\noptimizer: adamw_hf\n")
    assert main(["import", str(config), "--out", str(tmp_path / "a.yaml")]) == 0
    captured = capsys.readouterr()
    assert "validation refused optimizer" in captured.err
    assert "optimizer\tadamw_hf\trefused\t\ttraining.optim: Input should be" in captured.out


def test_remote_code_from_the_config_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    otfq = LF_SFT.parent / "llama3_lora_sft_otfq.yaml"  # trust_remote_code: true
    assert main(["import", str(otfq), "--out", str(tmp_path / "p.yaml")]) == 0
    assert "turns on model.trust_remote_code" in capsys.readouterr().err
    assert main(["import", str(LF_SFT), "--out", str(tmp_path / "q.yaml")]) == 0
    assert "trust_remote_code" not in capsys.readouterr().err


def test_an_out_folder_that_is_missing_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "p.yaml"
    assert main(["import", str(QLORA), "--out", str(out)]) == 2
    assert "cannot be written" in capsys.readouterr().err and not out.parent.exists()

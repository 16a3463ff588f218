"""A failed headless run states its error once on stderr: the panel, not also a FAILED line."""

from __future__ import annotations

from pathlib import Path

import yaml

from tui.cli import main


def test_a_failed_headless_run_prints_its_error_once(make_preset, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    preset = make_preset(max_steps=2)
    preset.dataset.path = str(bad)
    preset_file = tmp_path / "bad-data.yaml"
    preset_file.write_text(yaml.safe_dump(preset.model_dump(mode="json")))
    code = main(["train", str(preset_file), "--no-tui", "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("bad.jsonl") >= 1
    # The message's first words, whatever the panel's wrapping: they appear exactly once.
    assert err.count("FAILED") == 0, err

"""`finetty train --no-tui` on a preference preset: a bad row exits 2 naming it, before any
weights load, and the console shows the preference figures beside the loss."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from engine.core.events import PreferenceAccuracy
from engine.runs.rundir import human_line
from tests.tui.cli.test_cli import run_cli
from tests.tui.scenes.synthetic import run_started, step


def test_a_bad_preference_row_exits_2_naming_the_row(make_pair_preset, tmp_path: Path) -> None:
    preset = make_pair_preset("dpo")
    data = tmp_path / "bad.jsonl"
    good = {"prompt": "Say 1.", "chosen": "1", "rejected": "2"}
    same = {"prompt": "Say 2.", "chosen": "2", "rejected": "2"}
    data.write_text("\n".join(json.dumps(row) for row in (good, good, same)) + "\n")
    preset.dataset.path = str(data)
    path = tmp_path / "bad-dpo.yaml"
    path.write_text(yaml.safe_dump(preset.model_dump(mode="json")))
    result = run_cli("train", str(path), "--no-tui", "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 2, result.stderr
    assert "row 3" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "tiny-dpo").exists()  # nothing trained: no run left


def test_a_preference_step_line_shows_margin_and_accuracy() -> None:
    metrics = {"rewards/margins": 0.4123, "rewards/accuracies": 0.75, "logps/chosen": -3.0}
    line = human_line(dataclasses.replace(step(3), loss=0.5, metrics=metrics))
    assert line is not None and "loss 0.5000 margin 0.412 acc 0.75 lr " in line
    sft = human_line(step(3))
    assert sft is not None and "margin" not in sft and "acc" not in sft


def test_the_run_line_says_the_task_and_the_accuracy_line_its_pairs() -> None:
    started = dataclasses.replace(run_started(), task="DPO (sigmoid, beta 0.1) · LoRA")
    assert (human_line(started) or "").startswith(
        "run smollm2-demo: DPO (sigmoid, beta 0.1) · LoRA,"
    )
    line = human_line(PreferenceAccuracy("after", 0.976, 41, 42))
    assert line == "preference accuracy after training: 98% (41/42 held-out pairs)"

"""bench/ratios.py: finetty against Unsloth within each device session, from results.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import ratios  # noqa: E402


def row(session: str, stack: str, speed: float, **extra) -> dict:
    return {
        "session": session,
        "stack": stack,
        "shape": "qwen05b",
        "mode": "lora",
        "batch": 8,
        "seq": 2048,
        "tokens_per_s": speed,
        "peak_alloc_gib": 2.0,
        "gpus": 1,
        **extra,
    }


def test_medians_within_a_session_and_never_across() -> None:
    rows = [
        row("a", "finetty", 50.0),
        row("a", "unsloth", 40.0),
        row("a", "finetty", 70.0),
        row("a", "finetty", 60.0),
        row("b", "unsloth", 100.0),  # b: no finetty row
        row("a", "finetty", 999.0, variant="no-offload"),  # an A/B row, not the default
        row("a", "finetty", 999.0, batching="pad"),
        row("a", "finetty", 999.0, gpus=2),
        row("a", "finetty", 999.0, error="OutOfMemoryError"),
    ]
    (only,) = ratios.session_ratios(rows)
    assert (only.session, only.finetty_rows, only.unsloth_rows) == ("a", 3, 1)
    assert only.finetty_tokens_per_s == 60.0 and only.ratio == 1.5
    (variant,) = ratios.session_ratios(rows, variant="no-offload")
    assert variant.ratio == pytest.approx(999 / 40, rel=1e-3)


def test_other_batch_shapes_are_compared_apart() -> None:
    rows = [
        row("a", "finetty", 60.0),
        row("a", "unsloth", 40.0),
        row("a", "finetty", 30.0, batch=1),
        row("a", "unsloth", 10.0, batch=1),
        row("a", "finetty", 999.0, seq=512),  # no Unsloth row at 8 x 512
    ]
    found = {(r.batch, r.seq): r.ratio for r in ratios.session_ratios(rows)}
    assert found == {(8, 2048): 1.5, (1, 2048): 3.0}


def test_the_committed_results_give_the_readme_figures() -> None:
    found = {
        (r.session, r.shape, r.mode): r.ratio
        for r in ratios.session_ratios(ratios.read_rows(ratios.RESULTS))
        if r.batch == 8
    }
    assert found[("devN-20261201", "llama8b", "qlora")] == pytest.approx(1.11, abs=0.005)
    assert found[("devN-20261201", "llama8b", "lora")] == pytest.approx(1.11, abs=0.005)
    assert found[("devN-20261201", "qwen05b", "lora")] == pytest.approx(0.80, abs=0.005)
    assert found[("devP-20261201", "qwen05b", "lora")] == pytest.approx(0.87, abs=0.005)
    assert found[("devS-20261201", "llama8b", "qlora")] == pytest.approx(1.11, abs=0.005)
    assert found[("devS-20261201", "llama8b", "lora")] == pytest.approx(1.12, abs=0.005)
    assert found[("devS-20261201", "qwen05b", "lora")] == pytest.approx(1.71, abs=0.005)


def test_json_output_and_a_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "rows.jsonl"
    good.write_text(
        "\n".join(json.dumps(r) for r in [row("s", "finetty", 3), row("s", "unsloth", 2)])
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ratios.py"), "--results", str(good), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout)["ratio"] == 1.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row("s", "finetty", 3)) + "\n{oops\n")
    failed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ratios.py"), "--results", str(bad)],
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "bad.jsonl:2: not a JSON object" in failed.stderr


def test_a_missing_results_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "none.jsonl"
    failed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ratios.py"), "--results", str(missing)],
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and f"{missing}: no such file" in failed.stderr

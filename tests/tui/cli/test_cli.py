"""The `finetty` command: start-up cost, listings, exit codes and error messages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui.cli import main

ROOT = Path(__file__).resolve().parents[3]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["presets"], ["train", "--help"], ["runs", "--run-dir", "/nonexistent-finetty"]],
)
def test_light_commands_never_import_torch(argv: list[str]) -> None:
    code = f"import sys\nfrom tui.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    loaded = modules_after(code)
    assert "torch" not in loaded and "transformers" not in loaded and "textual" not in loaded


def test_engine_never_imports_a_ui() -> None:
    loaded = modules_after(
        "import engine.train.run, engine.train.trainer, engine.core.events, engine.runs.rundir, engine.config.schema, engine.config.presets, engine.train.hardware"
    )
    assert not {"tui", "textual", "rich"} & {name.split(".")[0] for name in loaded}


def test_help_is_fast() -> None:
    start = time.perf_counter()
    result = run_cli("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and "train" in result.stdout
    # Includes the interpreter's own start-up; the budget is 0.3 s for finetty's part.
    assert elapsed < 1.5


def test_presets_lists_bundled_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-demo" in out and "llama-3.1-8b-qlora-finetome" in out


def test_unknown_preset_is_exit_2_with_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "smollm2-dem"]) == 2
    err = capsys.readouterr().err
    assert "No preset named 'smollm2-dem'" in err and "smollm2-demo" in err
    assert "Traceback" not in err


def test_bad_override_names_key_and_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "smollm2-demo", "--set", "training.learning_rat=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rat" in err and "learning_rate" in err


def test_qlora_on_cpu_is_refused_before_loading(tmp_path: Path) -> None:
    result = run_cli(
        "train", "smollm2-demo", "--set", "method=qlora", "--no-tui", "--run-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "CUDA" in result.stderr and "Traceback" not in result.stderr


def test_train_end_to_end_headless_json(make_preset, tmp_path: Path) -> None:
    import yaml

    preset_file = tmp_path / "tiny.yaml"
    preset_file.write_text(yaml.safe_dump(make_preset(max_steps=2).model_dump(mode="json")))
    result = run_cli(
        "train", str(preset_file), "--no-tui", "--json", "--run-dir", str(tmp_path / "runs")
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["type"] == "finished"
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2]

    listing = run_cli("runs", "--run-dir", str(tmp_path / "runs"), "--json")
    rows = json.loads(listing.stdout)
    assert rows[0]["state"] == "finished" and rows[0]["step"] == 2

    plain = run_cli("train", "--resume", "latest", "--no-tui", "--run-dir", str(tmp_path / "runs"))
    assert plain.returncode == 2 and "no complete checkpoint" in plain.stderr


def _start_training(make_preset, tmp_path: Path, steps: int) -> tuple[subprocess.Popen, Path]:
    import yaml

    preset_file = tmp_path / "long.yaml"
    preset_file.write_text(
        yaml.safe_dump(make_preset(max_steps=steps, save_steps=0).model_dump(mode="json"))
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tui.cli",
            "train",
            str(preset_file),
            "--no-tui",
            "--json",
            "--run-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    return proc, tmp_path


def _wait_for_step(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["type"] == "step":
            return
    raise AssertionError(f"no step before exit: {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize(("signum", "code"), [(2, 130), (15, 143)])
def test_signal_checkpoints_then_exits_with_documented_code(
    make_preset, tmp_path: Path, signum: int, code: int
) -> None:
    import signal as signals

    from engine.runs import checkpoint, rundir

    proc, root = _start_training(make_preset, tmp_path, steps=10_000)
    _wait_for_step(proc)
    sent = time.monotonic()
    proc.send_signal(signals.Signals(signum))
    proc.communicate(timeout=60)
    assert proc.returncode == code
    # Bounded: one step plus one checkpoint write (both tiny here).
    assert time.monotonic() - sent < 30
    run_dir = rundir.resolve_run("latest", root)
    assert checkpoint.complete_checkpoints(run_dir / "checkpoints")
    assert rundir.read_status(run_dir)["state"] == "stopped"

"""Secrets stay out of the run directory, the control channel is private and strict, and code in
model files never runs without an explicit opt-in."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.config.schema import Preset
from engine.core.errors import ModelLoadError
from engine.core.events import CheckpointSaved, Event, RecordingSink, Step
from engine.models.loading import resolve_source
from engine.runs import rundir
from engine.runs.control import RunControl
from engine.train.run import Run
from tui.cli import main

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_secretvalue123"


def test_hf_tokens_never_reach_the_run_directory(make_preset, tmp_path: Path) -> None:
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(make_preset(max_steps=2).model_dump(mode="json")))
    env = {**os.environ, "HF_TOKEN": TOKEN, "HUGGING_FACE_HUB_TOKEN": TOKEN}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tui.cli",
            "train",
            str(preset),
            "--no-tui",
            "--json",
            "--run-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()
    run_dir = rundir.resolve_run("latest", tmp_path / "runs")
    for name in ("events.jsonl", "log.txt", "status.json", "config.yaml"):
        assert (run_dir / name).is_file()
    files = [p for p in run_dir.rglob("*") if p.is_file()]  # checkpoints and final/ too
    leaks = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert TOKEN.encode() not in result.stdout + result.stderr


def test_control_channel_is_private_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        rundir.CommandReader(tmp_path / "commands.jsonl")
        rundir.send_command(tmp_path, "save")
        loose = tmp_path / "other" / "commands.jsonl"
        loose.parent.mkdir()
        loose.touch(mode=0o666)  # left world-writable by an older version or by hand
        rundir.CommandReader(loose)
    finally:
        os.umask(old)
    for path in (tmp_path / "commands.jsonl", loose):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_only_documented_commands_are_accepted(tmp_path: Path) -> None:
    reader = rundir.CommandReader(tmp_path / "commands.jsonl")
    with (tmp_path / "commands.jsonl").open("ab") as channel:
        channel.write(
            b'{"command": "rm -rf /"}\n'
            b'{"command": "eval", "code": "import os"}\n'
            b"not json at all\n"
            b'["stop"]\n'
            b'{"command": ["stop"]}\n'
            b'{"command": {"stop": 1}}\n'
            b'{"command": 7}\n'
            b"\xff\xfe junk that is not UTF-8 \xc3\n"
            b'{"command": "STOP"}\n'
            b'{"command": "pause"}\n'
            b'{"command": "res'  # a writer is still writing this line
        )
    assert reader.poll() == ["pause"]
    with (tmp_path / "commands.jsonl").open("ab") as channel:
        channel.write(b'ume"}\n{"command": "stop"}\n')
    assert reader.poll() == ["resume", "stop"]  # byte offsets survived the non-UTF-8 line
    assert reader.poll() == []
    with pytest.raises(ValueError):
        RunControl().request("shutdown")
    with pytest.raises(Exception, match="Unknown command"):
        rundir.send_command(tmp_path, "shutdown")


class JunkThenSave(RecordingSink):
    """At step 1, a stranger's junk and one real `save` arrive in the channel."""

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, Step) and event.step == 1 and self.run is not None:
            with (self.run.run_dir / "commands.jsonl").open("ab") as channel:
                channel.write(b'{"command": "format-disk"}\n\x00\x01\n{"command": "save"}\n')


def test_a_running_run_ignores_unknown_commands(make_preset, tmp_path: Path) -> None:
    sink = JunkThenSave()
    run = Run(make_preset(save_steps=0), sink, runs_root=tmp_path)
    sink.run = run
    result = run.execute()
    assert result.status == "finished"
    assert [c.reason for c in sink.of_type(CheckpointSaved)] == ["requested"]


def test_remote_code_is_off_unless_asked() -> None:
    assert Preset().model.trust_remote_code is False
    assert Preset().model.allow_pickle_weights is False


def pickle_only_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    return folder


def test_pickle_only_weights_are_refused_without_opt_in(tmp_path: Path) -> None:
    folder = pickle_only_model(tmp_path / "model")
    with pytest.raises(ModelLoadError) as caught:
        resolve_source(str(folder))
    assert "pickle" in caught.value.message and str(folder) in caught.value.message
    assert caught.value.hint is not None
    assert "model.allow_pickle_weights: true" in caught.value.hint
    assert caught.value.exit_code == 2
    assert resolve_source(str(folder), allow_pickle=True).kind == "local"


def test_pickle_refusal_through_the_cli(make_preset, tmp_path: Path, capsys) -> None:
    folder = pickle_only_model(tmp_path / "model")
    data = make_preset().model_dump(mode="json")
    data["model"]["name_or_path"] = str(folder)
    preset = tmp_path / "pickled.yaml"
    preset.write_text(yaml.safe_dump(data))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(["train", str(preset), "--no-tui", "--run-dir", str(tmp_path / "runs")])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert code == 2
    assert "pickle" in err and "allow_pickle_weights" in err and "Traceback" not in err

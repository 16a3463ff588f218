"""Checkpoints are whole or absent: a full disk keeps the previous one, and only K are kept."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import pytest
import torch

from engine.core.errors import RunDirError, TrainingError
from engine.core.events import Failed, RecordingSink, RunStarted
from engine.runs import checkpoint, rundir
from engine.runs.checkpoint import TrainerState
from engine.train.run import Run


def parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def save(directory: Path, step: int, keep: int | None = 3) -> Path:
    model, optimizer, scheduler = parts()
    return checkpoint.save_checkpoint(
        directory,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=None,
        state=TrainerState(step, 0, step, 10 * step, 1.0),
        is_adapter=False,
        keep=keep,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("keep", "left"), [(2, [4, 5]), (1, [5]), (None, [1, 2, 3, 4, 5])])
def test_keeps_the_last_k_complete_checkpoints(tmp_path: Path, keep, left) -> None:
    for step in range(1, 6):
        save(tmp_path, step, keep=keep)
    kept = checkpoint.complete_checkpoints(tmp_path)
    assert [int(p.name.split("-")[1]) for p in kept] == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in kept]


def test_a_half_written_folder_never_counts_and_is_replaced(tmp_path: Path) -> None:
    save(tmp_path, 1)
    crashed = tmp_path / ".tmp-checkpoint-2"  # the process died while writing step 2
    crashed.mkdir()
    (crashed / "trainable.safetensors").write_bytes(b"half")
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert crashed in checkpoint.incomplete_checkpoints(tmp_path)
    save(tmp_path, 2)
    assert not crashed.exists()
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == [
        "checkpoint-1",
        "checkpoint-2",
    ]


def _disk_full(kind: str):
    """What each writer raises when the disk fills up: Python, safetensors and torch differ."""
    from safetensors import SafetensorError

    return {
        "oserror": OSError(errno.ENOSPC, "No space left on device"),
        "safetensors": SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
        "torch": RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    }[kind]


@pytest.mark.parametrize("kind", ["oserror", "safetensors", "torch"])
def test_full_disk_keeps_the_previous_checkpoint_and_says_what_to_do(
    tmp_path: Path, monkeypatch, kind: str
) -> None:
    import safetensors.torch

    previous = save(tmp_path, 1)
    before = snapshot(previous)

    def full(*args, **kwargs):
        raise _disk_full(kind)

    target = (safetensors.torch, "save_file") if kind != "torch" else (torch, "save")
    monkeypatch.setattr(*target, full)
    with pytest.raises(TrainingError) as caught:
        save(tmp_path, 2, keep=1)  # keep=1 must not prune the old one before the new is whole
    error = caught.value
    assert str(tmp_path) in error.message and "step 2" in error.message
    assert error.hint is not None
    assert f"df -h {tmp_path}" in error.hint and "--resume latest" in error.hint
    assert error.exit_code == 1
    assert snapshot(previous) == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]  # no .tmp-* left behind
    monkeypatch.undo()
    model, optimizer, scheduler = parts()
    state = checkpoint.load_checkpoint(
        previous, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None
    )
    assert state.step == 1


@pytest.fixture
def keep_signal_handlers():
    """The CLI installs SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_full_disk_mid_run_ends_with_exit_1_then_resumes(
    make_preset, tmp_path: Path, monkeypatch, capsys, keep_signal_handlers
) -> None:
    import peft  # noqa: F401 - binds the real save_file before the patch below (peft_model imports it by name)
    import safetensors.torch
    import yaml

    from tui.cli import main

    original = safetensors.torch.save_file

    def fills_up(tensors, filename, *args, **kwargs):
        if "checkpoint-4" in str(filename):  # the disk fills up during the second save
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_up)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(make_preset(save_steps=2).model_dump(mode="json")))
    root = tmp_path / "runs"
    assert main(["train", str(preset), "--no-tui", "--run-dir", str(root)]) == 1
    err = capsys.readouterr().err
    run_dir = rundir.resolve_run("latest", root)
    folder = run_dir / "checkpoints"
    assert "Training failed" in err and "No space left on device" in err
    assert "Traceback" not in err
    failed = next(
        e for e in map(json.loads, (run_dir / "events.jsonl").open()) if e["type"] == "failed"
    )
    assert str(folder) in failed["message"] and "No space left on device" in failed["message"]
    assert f"df -h {folder}" in failed["hint"] and "--resume latest" in failed["hint"]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2"]
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and status["last_checkpoint"] == str(folder / "checkpoint-2")

    monkeypatch.setattr(safetensors.torch, "save_file", original)  # space was freed
    sink = RecordingSink()
    resumed = Run(make_preset(save_steps=2), sink, runs_root=root, resume_dir=run_dir).execute()
    assert resumed.status == "finished", sink.of_type(Failed)
    assert sink.of_type(RunStarted)[0].resumed_from_step == 2


@pytest.mark.parametrize("first_byte", range(256))
def test_a_one_byte_torch_file_is_a_damaged_file_not_an_internal_error(
    tmp_path: Path, first_byte: int
) -> None:
    """Any single byte is a truncated torch.save file: some (M, X, j, r, ...) made the unpickler
    raise struct.error, which escaped as FAILED (internal) instead of falling back (hypothesis)."""
    file = tmp_path / "optimizer.pt"
    file.write_bytes(bytes([first_byte]))
    with pytest.raises(RunDirError, match=r"optimizer\.pt"):
        checkpoint.read_torch_file(file)

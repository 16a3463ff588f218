"""Model loading measures its progress: the weight files' bytes read, with an ETA (issue 17)."""

from __future__ import annotations

from pathlib import Path

from engine.core.events import Progress, RecordingSink, RunStarted
from engine.models import weight_files
from engine.train.run import Run


def test_read_ahead_counts_every_byte_of_every_shard_in_order(tmp_path: Path) -> None:
    sizes = [weight_files.CHUNK + 123, 5, 2 * weight_files.CHUNK]
    for index, size in enumerate(sizes):
        (tmp_path / f"model-{index:05d}-of-00003.safetensors").write_bytes(b"\0" * size)
    (tmp_path / "config.json").write_text("{}")
    reports: list[tuple[int, int, float]] = []
    files = weight_files.weight_files(tmp_path)
    assert [p.name for p in files] == [f"model-{i:05d}-of-00003.safetensors" for i in range(3)]
    assert weight_files.read_ahead(files, lambda *r: reports.append(r)) == sum(sizes)
    done = [r[0] for r in reports]
    assert done == sorted(done) and reports[-1][:2] == (sum(sizes), sum(sizes))


def test_a_folder_without_safetensors_has_nothing_to_read(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert weight_files.weight_files(tmp_path) == []
    assert weight_files.weight_files(tmp_path / "missing") == []


def test_a_run_reports_its_model_loading_in_bytes_before_it_starts(
    make_preset, tiny_model_dir, tmp_path: Path
) -> None:
    sink = RecordingSink()
    result = Run(make_preset(max_steps=1, save_steps=0), sink, runs_root=tmp_path).execute()
    assert result.exit_code == 0
    loading = [
        e for e in sink.events if isinstance(e, Progress) and e.task == "loading model weights"
    ]
    size_mib = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors")) / 2**20
    assert loading and loading[-1].unit == "MiB"
    assert abs(loading[-1].done - size_mib) < 0.1 and loading[-1].eta_s == 0
    started = next(i for i, e in enumerate(sink.events) if isinstance(e, RunStarted))
    assert sink.events.index(loading[-1]) < started


def test_chat_loading_shows_the_weights_read_in_mib(tiny_model_dir: Path) -> None:
    from engine.models.inference import load_chat_model

    stages: list[str] = []
    load_chat_model(str(tiny_model_dir), progress=stages.append)
    size_mib = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors")) / 2**20
    weights = [s for s in stages if s.startswith("weights ")]
    assert weights and weights[-1].startswith(f"weights {size_mib:.0f}/{size_mib:.0f} MiB")

"""training.report_to: real runs on the tiny model, read back through each tracker's own files
(TensorBoard's reader; W&B's offline run file), a tracker broken mid-run, a missing library."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.config.presets import validate
from engine.core.errors import EXIT_OK, ConfigError
from engine.core.events import Alarm, Event, Finished, RecordingSink, Step
from engine.runs.trackers.factory import TRACKERS, check_installed, tracker_sinks
from engine.runs.trackers.public_config import public_config
from engine.runs.trackers.wandb import wandb_mode
from engine.train.run import Run

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")


def tracker_alarms(sink: RecordingSink) -> list[Alarm]:
    """The trackers' alarms (a busy test machine may raise throughput ones beside them)."""
    return [alarm for alarm in sink.of_type(Alarm) if alarm.kind == "tracker"]


def step_losses(run_dir: Path) -> dict[int, float]:
    """The losses of events.jsonl, the run's own record, by step."""
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    return {e["step"]: e["loss"] for e in events if e["type"] == "step"}


# -- the preset key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("tensorboard", ["tensorboard"]),
        (["wandb", "tensorboard", "wandb"], ["wandb", "tensorboard"]),
        ("none", ["none"]),
        ([], ["none"]),
        ("all", ["all"]),
    ],
)
def test_report_to_takes_trainingarguments_forms(given: object, expected: list[str]) -> None:
    preset = validate({"name": "t", "training": {"report_to": given}})
    assert preset.training.report_to == expected


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            "trackio",
            "trackio is not a tracker finetty logs to; use tensorboard, wandb, mlflow, all or none",
        ),
        (["none", "wandb"], "all and none stand alone"),
    ],
)
def test_report_to_refuses_what_it_would_ignore(given: object, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate({"name": "t", "training": {"report_to": given}})
    assert "training.report_to" in caught.value.message and said in caught.value.message


def test_every_name_the_schema_takes_has_a_tracker() -> None:
    from engine.config.schema import REPORT_TO

    assert set(REPORT_TO) == set(TRACKERS)


def test_none_opens_no_tracker_and_all_opens_every_installed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = RecordingSink()
    assert tracker_sinks(["none"], tmp_path, report) == []
    assert [sink.name for sink in tracker_sinks(["all"], tmp_path, report)] == list(TRACKERS)
    monkeypatch.setitem(sys.modules, "wandb", None)  # all: only what is installed
    others = [name for name in TRACKERS if name != "wandb"]
    assert [sink.name for sink in tracker_sinks(["all"], tmp_path, report)] == others
    check_installed(["all"])  # all never asks for what is missing


def test_public_config_drops_secrets_at_any_depth() -> None:
    config = {
        "name": "x",
        "model": {"tokenizer": "t", "hub_token": "hf_secret"},
        "notify": [{"webhook_url": "https://hooks.example/abc", "channel": "c"}],
        "training": {"max_new_tokens": 8, "WANDB_API_KEY": "k", "password": "p"},
    }
    assert public_config(config) == {
        "name": "x",
        "model": {"tokenizer": "t"},
        "notify": [{"channel": "c"}],
        "training": {"max_new_tokens": 8},
    }


def test_wandb_offline_env_means_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_OFFLINE", raising=False)
    assert wandb_mode() is None  # the library's own choice
    monkeypatch.setenv("WANDB_OFFLINE", "true")
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the library's own variable wins
    assert wandb_mode() == "disabled"


def test_missing_library_is_a_config_error_before_any_file(
    make_preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules is Python's own way of making an import fail.
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError) as caught:
        Run(make_preset(report_to="wandb"), RecordingSink(), runs_root=tmp_path / "runs")
    assert "wandb" in caught.value.message
    assert "pip install 'finetty[wandb]'" in (caught.value.hint or "")
    assert not (tmp_path / "runs").exists()
    check_installed(["none"])  # asking for none needs nothing


# -- TensorBoard ------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_runs_scalars_and_config(
    make_preset, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = RecordingSink()
    preset = make_preset(report_to="tensorboard", eval_steps=3)
    result = Run(preset, sink, runs_root=tmp_path).execute()
    assert result.exit_code == EXIT_OK and not tracker_alarms(sink)
    reader = EventAccumulator(str(result.run_dir / "tensorboard"))
    reader.Reload()
    logged = {point.step: point.value for point in reader.Scalars("train/loss")}
    expected = step_losses(result.run_dir)
    assert list(logged) == list(expected) == [1, 2, 3, 4, 5, 6]
    assert logged == pytest.approx(expected, rel=1e-6)  # float32 in the event file
    steps = sink.of_type(Step)
    lrs = [point.value for point in reader.Scalars("train/learning_rate")]
    assert lrs == pytest.approx([s.learning_rate for s in steps], rel=1e-6)
    assert [p.step for p in reader.Scalars("eval/loss")] == [3, 6]
    # The text panels are indented JSON (a Markdown code block): read back as data.
    text = {
        tag: json.loads(reader.Tensors(tag)[0].tensor_proto.string_val[0])
        for tag in ("config", "run")
    }
    assert text["config"] == preset.model_dump(mode="json")
    assert text["run"]["run_name"] == result.run_dir.name and text["run"]["device"] == "cpu"


class BreaksTensorBoard(RecordingSink):
    """At a given step the tensorboard folder is deleted and a plain file takes its name, as a
    clean-up script or a full, remounted disk would leave it: every later write fails."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.run_dir: Path | None = None

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, Step) and event.step == self.step and self.run_dir is not None:
            folder = self.run_dir / "tensorboard"
            shutil.rmtree(folder)
            folder.write_text("not a folder\n")


# A writer thread's exception (torch's SummaryWriter has one) is a traceback on the terminal:
# pytest reports it as this warning, made an error here.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_tracker_failing_mid_run_raises_one_alarm_and_training_goes_on(
    make_preset, tmp_path: Path
) -> None:
    sink = BreaksTensorBoard(step=2)
    run = Run(make_preset(report_to="tensorboard"), sink, runs_root=tmp_path)
    sink.run_dir = run.run_dir
    result = run.execute()
    assert result.status == "finished" and result.exit_code == EXIT_OK
    assert [s.step for s in sink.of_type(Step)] == [1, 2, 3, 4, 5, 6]
    alarms = tracker_alarms(sink)
    assert len(alarms) == 1 and alarms[0].step == 2
    assert "tensorboard stopped logging at step 2" in alarms[0].message
    assert isinstance(sink.events[-1], Finished)
    recorded = [
        json.loads(line)
        for line in (run.run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [e["step"] for e in recorded if e.get("kind") == "tracker"] == [2]


# -- Weights & Biases, offline -----------------------------------------------------------------

HEADER = 7  # ":W&B", a 2-byte magic number, a version byte
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a .wandb file: LevelDB's log format (32 KiB blocks of
    checksummed chunks) after W&B's header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", HEADER
    while offset + 7 <= len(data):
        if BLOCK - offset % BLOCK < 7:  # a block's tail too short for a chunk header: padding
            offset += BLOCK - offset % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_offline_run_holds_config_and_history(
    make_preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # never a server
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    sink = RecordingSink()
    preset = make_preset(report_to="wandb", eval_steps=3)
    result = Run(preset, sink, runs_root=tmp_path).execute()
    assert result.exit_code == EXIT_OK and not tracker_alarms(sink)
    (run_file,) = (tmp_path / "wandb-dir").glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].display_name == result.run_dir.name
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") in ("run", "config")
        for item in (r.run.config.update if r.HasField("run") else r.config.update)
    }
    assert config["training"] == preset.model_dump(mode="json")["training"]
    assert config["run"]["device"] == "cpu"
    history: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in r.history.item
            }
            history.setdefault(int(row.get("_step", r.history.step.num)), {}).update(row)
    losses = {step: row["train/loss"] for step, row in history.items() if "train/loss" in row}
    assert losses == pytest.approx(step_losses(result.run_dir))
    assert [step for step, row in history.items() if "eval/loss" in row] == [3, 6]


def test_wandb_online_without_login_is_an_alarm_not_a_prompt(
    make_preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine that never ran `wandb login`: no key in the environment, netrc or settings.
    for name in ("WANDB_MODE", "WANDB_OFFLINE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = RecordingSink()
    result = Run(make_preset(report_to="wandb"), sink, runs_root=tmp_path).execute()
    assert result.exit_code == EXIT_OK and len(sink.of_type(Step)) == 6
    (alarm,) = tracker_alarms(sink)
    assert "W&B has no login" in alarm.message and "WANDB_MODE=offline" in alarm.message
    assert not (tmp_path / "wandb-dir" / "wandb").exists()  # no run was started


# -- MLflow, a local file store ---------------------------------------------------------------


def test_mlflow_file_store_holds_params_tags_and_metrics(
    make_preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database else
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tracker-test")
    sink = RecordingSink()
    preset = make_preset(report_to="mlflow", eval_steps=3)
    result = Run(preset, sink, runs_root=tmp_path).execute()
    assert result.exit_code == EXIT_OK and not tracker_alarms(sink)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tracker-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == result.run_dir.name and run.info.status == "FINISHED"
    training = preset.model_dump(mode="json")["training"]
    assert run.data.params["training.learning_rate"] == str(training["learning_rate"])
    assert run.data.tags["device"] == "cpu"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(step_losses(result.run_dir))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [3, 6]

"""Bad input, fuzzed: every case ends in exit code 2 with one short message naming the file, key
or row, never a traceback, and never a change to an earlier run. The cases: tests/fuzz_cases.md.

Presets are refused before a run starts, so they are fuzzed through the real CLI entry point in
this process. Dataset rows are fuzzed through the whole data pipeline (read, validate, tokenize),
and each kind of bad dataset also goes through the CLI once with the tiny model.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.config.schema import Preset
from engine.core.errors import DatasetError
from tui.cli import headless, main

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_MESSAGE = 4000  # "one paragraph": a few bulleted problems at most, never a dumped row


# -- helpers ------------------------------------------------------------------------------------
class Started(Exception):
    """A run was about to start: the input was accepted."""


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """run_headless installs SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preset problems must be refused before any run (and any run directory) exists."""

    def refuse(*args: object, **kwargs: object) -> int:
        raise Started()

    monkeypatch.setattr(headless, "run_headless", refuse)


@pytest.fixture
def base(make_preset) -> dict:
    """A valid preset for the tiny model, as plain data."""
    return make_preset(max_steps=2, save_steps=0).model_dump(mode="json")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A runs root holding an earlier run of the same preset name, to prove it stays untouched."""
    earlier = tmp_path / "runs" / "tiny" / "20200101-000000"
    (earlier / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (earlier / "events.jsonl").write_text('{"type": "finished", "status": "stopped"}\n')
    (earlier / "status.json").write_text('{"state": "stopped", "step": 2, "pid": 1}')
    (earlier / "config.yaml").write_text("name: tiny\n")
    (earlier / "log.txt").write_text("stopped at step 2\n")
    (earlier / "checkpoints" / "checkpoint-2" / "COMPLETE").write_text("ok\n")
    return tmp_path / "runs"


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def flat(text: str) -> str:
    """Panel text without borders, line breaks or spaces: rich wraps long paths anywhere."""
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


def refused(
    code: int | None, err: str, *names: str, runs_root: Path | None = None, before=None
) -> None:
    assert "Traceback" not in err, err
    assert code == 2, err
    assert len(err) < MAX_MESSAGE, f"message of {len(err)} characters"
    assert any(flat(name) in flat(err) for name in names), (names, err)
    if runs_root is not None:
        assert snapshot(runs_root / "tiny" / "20200101-000000") == before


def train(preset: Path, runs_root: Path, *extra: str) -> int | None:
    try:
        return main(["train", str(preset), "--no-tui", "--run-dir", str(runs_root), *extra])
    except Started:
        return None


# -- presets: malformed YAML, wrong types, unknown keys, empty files, non-UTF-8 ------------------
YAML_NOISE = st.text(alphabet=st.sampled_from(list("ab:-[]{}#&*!|>'\"%@`, \t\n?~.0")), max_size=40)


@FUZZ
@given(noise=YAML_NOISE, at=st.floats(0, 1))
def test_preset_with_noise_is_refused(
    base: dict, tmp_path: Path, runs: Path, capsys, no_run, noise: str, at: float
) -> None:
    text = yaml.safe_dump(base)
    cut = int(at * len(text))
    preset = tmp_path / "case.yaml"
    preset.write_text(text[:cut] + noise + text[cut:], encoding="utf-8")
    before = snapshot(runs / "tiny" / "20200101-000000")
    code = train(preset, runs)
    assume(code is not None)  # the noise happened to leave a valid preset
    refused(code, capsys.readouterr().err, str(preset), runs_root=runs, before=before)


def scalar_fields() -> list[tuple[str, ...]]:
    """Every preset key whose value is one scalar (so a list or a mapping there is wrong)."""
    found: list[tuple[str, ...]] = []

    def walk(model: type, prefix: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation, (*prefix, name))
            elif not re.search(r"list|dict|Any", str(annotation)):
                found.append((*prefix, name))

    walk(Preset, ())
    return found


WRONG_VALUES = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=3),
    st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.integers(), min_size=1),
)


@FUZZ
@given(key=st.sampled_from(scalar_fields()), value=WRONG_VALUES)
def test_wrong_type_names_the_key(
    base: dict, tmp_path: Path, runs: Path, capsys, no_run, key: tuple, value
) -> None:
    data = json.loads(json.dumps(base))
    target = data
    for part in key[:-1]:
        target = target.setdefault(part, {})
    target[key[-1]] = value
    preset = tmp_path / "case.yaml"
    preset.write_text(yaml.safe_dump(data))
    before = snapshot(runs / "tiny" / "20200101-000000")
    code = train(preset, runs)
    refused(code, capsys.readouterr().err, ".".join(key), runs_root=runs, before=before)


SECTIONS = ["model", "dataset", "lora", "training", "export", None]
IDENTIFIER = st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True)


@FUZZ
@given(section=st.sampled_from(SECTIONS), key=IDENTIFIER)
def test_unknown_key_is_named(
    base: dict, tmp_path: Path, runs: Path, capsys, no_run, section, key: str
) -> None:
    data = json.loads(json.dumps(base))
    target = data if section is None else data.setdefault(section, {})
    model = Preset if section is None else Preset.model_fields[section].annotation
    assume(key not in typing.cast(typing.Any, model).model_fields)
    target[key] = 1
    preset = tmp_path / "case.yaml"
    preset.write_text(yaml.safe_dump(data))
    code = train(preset, runs)
    where = key if section is None else f"{section}.{key}"
    err = capsys.readouterr().err
    refused(code, err, f"{where}: unknown key")


@FUZZ
@given(at=st.floats(0, 1), bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80"]))
def test_non_utf8_preset_is_refused(
    base: dict, tmp_path: Path, runs: Path, capsys, no_run, at: float, bad: bytes
) -> None:
    data = yaml.safe_dump(base).encode()
    cut = int(at * len(data))
    preset = tmp_path / "case.yaml"
    preset.write_bytes(data[:cut] + bad + data[cut:])
    code = train(preset, runs)
    refused(code, capsys.readouterr().err, "not UTF-8")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the preset is empty"),
        ("\n\n   \n", "the preset is empty"),
        ("# only a comment\n", "the preset is empty"),
        ("---\n", "the preset is empty"),
        ("~\n", "the preset is empty"),
        ("- model\n- dataset\n", "must be a mapping"),
        ("just words\n", "must be a mapping"),
        ("42\n", "must be a mapping"),
        ("a: " + "[" * 5000 + "\n", "nested too deeply"),
        ("training:\n  max_steps: " + "9" * 5000 + "\n", "not valid YAML"),
        ("name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
        ("model: [1, 2]\n", "model"),
        ("training: fast\n", "training"),
        ("training:\n  learning_rate: .nan\n", "training.learning_rate"),
        ("name: tiny\ntraining: {max_steps: 1}\ntraining: {max_steps: 2}\n", "duplicate key"),
        ('name: "a\\0b"\n', "name"),
        ("name: " + "n" * 300 + "\n", "name"),
        ("name: ../escape\n", "name"),
    ],
)
def test_preset_cases(tmp_path: Path, runs: Path, capsys, no_run, text: str, fragment: str) -> None:
    preset = tmp_path / "case.yaml"
    preset.write_text(text, encoding="utf-8")
    before = snapshot(runs / "tiny" / "20200101-000000")
    code = train(preset, runs)
    err = capsys.readouterr().err
    refused(code, err, fragment, runs_root=runs, before=before)
    assert flat(str(preset)) in flat(err)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "{tmp}/missing.yaml"], "Preset file not found"),
        (["train", "{tmp}/folder.yaml"], "is a folder, not a regular file"),
        (["train", "no-such-preset-name"], "No preset named"),
        (["train", "{preset}", "--set", "training.learning_rate=[1"], "training.learning_rate"),
        (["train", "{preset}", "--set", "training.learnin_rate=1"], "--set training.learnin_rate"),
        (["train", "{preset}", "--set", "a.b.c=1"], "--set a"),
        (["train", "{preset}", "--set", "noequals"], "expected KEY=VALUE"),
        (["train", "{preset}", "--set", "model=3"], "model"),
        (["train", "--resume", "{tmp}"], "not a finetty run directory"),
        (["train", "--resume", "latest", "--run-dir", "{tmp}/empty"], "No runs found"),
        (["train", "{preset}", "--resume", "latest", "--set", "name=x"], "--set cannot"),
        (["train"], "needs a preset"),
    ],
)
def test_command_line_cases(
    base: dict, tmp_path: Path, runs: Path, capsys, no_run, argv: list[str], fragment: str
) -> None:
    preset = tmp_path / "ok.yaml"
    preset.write_text(yaml.safe_dump(base))
    (tmp_path / "folder.yaml").mkdir()
    argv = [arg.format(tmp=tmp_path, preset=preset) for arg in argv]
    if "--run-dir" not in argv:
        argv += ["--run-dir", str(runs)]
    before = snapshot(runs / "tiny" / "20200101-000000")
    try:
        code = main([*argv, "--no-tui"])
    except Started:
        code = None
    refused(code, capsys.readouterr().err, fragment, runs_root=runs, before=before)


def test_resume_of_a_run_without_checkpoints_leaves_it_alone(
    base: dict, tmp_path: Path, capsys, no_run
) -> None:
    finished = tmp_path / "runs" / "tiny" / "20200101-000000"
    finished.mkdir(parents=True)
    (finished / "config.yaml").write_text(yaml.safe_dump(base))
    (finished / "events.jsonl").write_text('{"type": "finished", "status": "finished"}\n')
    (finished / "status.json").write_text('{"state": "finished", "step": 2}')
    before = snapshot(finished)
    code = main(["train", "--resume", "latest", "--no-tui", "--run-dir", str(tmp_path / "runs")])
    refused(code, capsys.readouterr().err, "no complete checkpoint")
    assert snapshot(finished) == before and sorted(p.name for p in finished.iterdir()) == [
        "config.yaml",
        "events.jsonl",
        "status.json",
    ]


@pytest.mark.parametrize("where", ["file", "unwritable"])
def test_unusable_runs_root_is_refused(base: dict, tmp_path: Path, capsys, where: str) -> None:
    preset = tmp_path / "ok.yaml"
    preset.write_text(yaml.safe_dump(base))
    root = {"file": str(preset), "unwritable": "/proc/finetty-runs"}[where]
    code = main(["train", str(preset), "--no-tui", "--run-dir", root])
    refused(code, capsys.readouterr().err, "Cannot create the run directory")


# -- datasets: the whole pipeline, fuzzed -------------------------------------------------------
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
ROLE = st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", "", "USER"])
TURN = st.fixed_dictionaries(
    {},
    optional={
        "role": ROLE | JSON,
        "content": st.text(max_size=30) | JSON,
        "from": ROLE,
        "value": st.text(max_size=30),
    },
)
ROW = st.one_of(
    JSON,
    st.fixed_dictionaries({"messages": st.lists(TURN, max_size=4) | JSON}),
    st.fixed_dictionaries({"conversations": st.lists(TURN, max_size=4)}),
    st.fixed_dictionaries(
        {},
        optional={
            "instruction": st.text(max_size=20) | JSON,
            "input": JSON,
            "output": st.text(max_size=20) | JSON,
        },
    ),
    st.fixed_dictionaries({"text": st.text(max_size=40) | JSON}),
)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def prepare(tokenizer, path: Path, fmt: str = "auto"):
    from engine.data import prepare_dataset

    return prepare_dataset(
        tokenizer,
        path=str(path),
        split="train",
        fmt=fmt,
        chat_template="chatml",
        train_on="all",
        max_length=64,
        packing=False,
        val_size=0,
        seed=0,
    )


def data_refused(error: DatasetError, name: str) -> None:
    message = str(error)
    assert name in message, message
    assert len(message) < MAX_MESSAGE, f"message of {len(message)} characters"
    assert error.exit_code == 2


@FUZZ
@given(
    rows=st.lists(ROW, max_size=4),
    fmt=st.sampled_from(["auto", "messages", "alpaca", "text", "sharegpt"]),
)
def test_fuzzed_rows_are_trained_or_refused_by_row(tokenizer, tmp_path: Path, rows, fmt) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    try:
        prepare(tokenizer, path, fmt)
    except DatasetError as error:
        data_refused(error, "rows.jsonl")


@FUZZ
@given(
    data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"])
)
def test_fuzzed_bytes_are_read_or_refused(tokenizer, tmp_path: Path, data: bytes, suffix) -> None:
    path = tmp_path / f"bytes{suffix}"
    path.write_bytes(data)
    try:
        prepare(tokenizer, path)
    except DatasetError as error:
        data_refused(error, path.name)


# -- datasets and model paths through the CLI, with the tiny model -------------------------------
def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


GOOD = chat(("user", "hi"), ("assistant", "hello"))
HUGE = "x" * 2_000_000

DATASETS: list[tuple[str, str, bytes, str]] = [
    ("empty", ".jsonl", b"", "data.jsonl is empty"),
    ("blank lines", ".jsonl", b"\n  \n\n", "data.jsonl is empty"),
    ("not utf-8 jsonl", ".jsonl", json.dumps(GOOD).encode() + b'\n{"text": "\xff"}\n', "row 2"),
    ("not utf-8 csv", ".csv", b"text\nab\xffcd\n", "line 2"),
    ("malformed json row", ".jsonl", json.dumps(GOOD).encode() + b"\n{not json\n", "row 2"),
    ("json not a list", ".json", b'"just a string"', "expected a list of rows"),
    (
        "missing fields",
        ".jsonl",
        b'{"instruction": "hi", "output": "a"}\n{"instruction": "b"}\n',
        "row 2: missing field 'output'",
    ),
    (
        "wrong field type",
        ".jsonl",
        b'{"instruction": "hi", "output": 3}\n',
        "field 'output' must be text",
    ),
    (
        "unknown format",
        ".jsonl",
        b'{"prompt": "a", "completion": "b"}\n',
        "cannot tell the dataset format",
    ),
    (
        "two users in a row",
        ".jsonl",
        json.dumps(chat(("user", "a"), ("user", "b"), ("assistant", "c"))).encode(),
        "messages[2] is 'user'",
    ),
    (
        "assistant first",
        ".jsonl",
        json.dumps(chat(("assistant", "a"), ("user", "b"))).encode(),
        "messages[1] is 'assistant'",
    ),
    (
        "no assistant turn",
        ".jsonl",
        json.dumps(chat(("user", "a"))).encode(),
        "has no assistant turn",
    ),
    (
        "unknown role",
        ".jsonl",
        json.dumps(chat(("user", "a"), ("robot", "b"))).encode(),
        "unknown role 'robot'",
    ),
    (
        "huge row with a bad role",
        ".jsonl",
        json.dumps(chat(("user", "a"), (HUGE, "b"))).encode(),
        "has unknown role",
    ),
    (
        "huge row of many keys",
        ".jsonl",
        json.dumps({"instruction": HUGE, **{f"k{i}" * 50: i for i in range(5000)}}).encode(),
        "cannot tell the dataset format",
    ),
    ("deeply nested row", ".jsonl", b'{"messages": ' + b"[" * 100_000 + b"\n", "nested too deeply"),
    ("a number of 5000 digits", ".jsonl", b'{"text": ' + b"9" * 5000 + b"}\n", "a number too long"),
    (
        "unpaired surrogate",
        ".jsonl",
        b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "b"}]}\n',
        "unpaired surrogate",
    ),
    ("unsupported file type", ".txt", b"hello\n", "unsupported dataset file type"),
    ("a model file as dataset", ".safetensors", b"\x00" * 16, "is a model file, not a dataset"),
]


@pytest.mark.parametrize(
    ("case", "suffix", "content", "fragment"), DATASETS, ids=[d[0] for d in DATASETS]
)
def test_dataset_cases(
    base: dict, tmp_path: Path, runs: Path, capsys, case, suffix, content, fragment
) -> None:
    dataset = tmp_path / f"data{suffix}"
    dataset.write_bytes(content)
    data = json.loads(json.dumps(base))
    data["dataset"].update(path=str(dataset), val_size=0)
    preset = tmp_path / "case.yaml"
    preset.write_text(yaml.safe_dump(data))
    before = snapshot(runs / "tiny" / "20200101-000000")
    code = train(preset, runs)
    err = capsys.readouterr().err
    refused(code, err, fragment, runs_root=runs, before=before)
    assert flat(dataset.name) in flat(err)


@pytest.mark.parametrize(
    ("case", "key", "value", "fragment"),
    [
        ("dataset path missing", "dataset", "{tmp}/nope.jsonl", "Dataset file not found"),
        (
            "dataset path is a model folder",
            "dataset",
            "{model}",
            "is a model directory, not a dataset",
        ),
        ("local split other than train", "split", "test", "whose only split is 'train'"),
        ("split selects no rows", "split", "train[30:40]", "selects no rows"),
        ("model path is a dataset file", "model", "{data}", "is a dataset file, not a model"),
        ("model folder missing", "model", "{tmp}/no-model/", "Model folder not found"),
        ("model path is a dataset folder", "model", "{tmp}", "looks like a dataset folder"),
        ("gguf path missing", "model", "{tmp}/model.gguf", "GGUF file not found"),
    ],
)
def test_path_cases(
    base: dict, tmp_path: Path, runs: Path, capsys, tiny_model_dir: Path, case, key, value, fragment
) -> None:
    data = json.loads(json.dumps(base))
    value = value.format(tmp=tmp_path, model=tiny_model_dir, data=data["dataset"]["path"])
    if key == "model":
        data["model"]["name_or_path"] = value
    elif key == "dataset":
        data["dataset"]["path"] = value
    else:
        data["dataset"][key] = value
    (tmp_path / "rows.jsonl").write_text(json.dumps(GOOD) + "\n")
    preset = tmp_path / "case.yaml"
    preset.write_text(yaml.safe_dump(data))
    before = snapshot(runs / "tiny" / "20200101-000000")
    code = train(preset, runs)
    refused(code, capsys.readouterr().err, fragment, runs_root=runs, before=before)


# -- a few through a real process: exit status and stderr as a user sees them -------------------
@pytest.mark.parametrize("case", ["preset not utf-8", "roles out of order"])
def test_through_a_real_process(base: dict, tmp_path: Path, runs: Path, case: str) -> None:
    preset = tmp_path / "case.yaml"
    if case == "preset not utf-8":
        preset.write_bytes(yaml.safe_dump(base).encode() + b"\nname: \xff\n")
    else:
        dataset = tmp_path / "roles.jsonl"
        dataset.write_text(json.dumps(chat(("user", "a"), ("user", "b"))) + "\n")
        data = json.loads(json.dumps(base))
        data["dataset"].update(path=str(dataset), val_size=0)
        preset.write_text(yaml.safe_dump(data))
    before = snapshot(runs / "tiny" / "20200101-000000")
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "train", str(preset), "--no-tui", "--run-dir", str(runs)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    fragment = "not UTF-8" if case == "preset not utf-8" else "roles.jsonl, row 1"
    refused(result.returncode, result.stderr, fragment, runs_root=runs, before=before)

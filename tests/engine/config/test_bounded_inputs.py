"""Bounded inputs (issue 18, items 4 and 7 and the lists): YAML aliases, huge rows, files that are
not files, numbers past any sensible bound, and escape codes in user text. Each case ends in
exit 2 with what, where and how to fix (never a traceback), or is read correctly, with memory
and time that grow with max_seq_length, not with the input. The cases: tests/fuzz_cases.md.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from engine.config.schema import BUILTIN_DATASET, Preset
from engine.core.errors import ConfigError, DatasetError
from engine.core.terminal_text import printable
from engine.data import encode_conversation, encode_text, load_records, prepare_dataset
from engine.data.encode import IGNORE_INDEX
from engine.data.templates import CHAT_TEMPLATES
from tui.cli import headless, main

ROOT = Path(__file__).resolve().parents[3]
FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ESCAPES = ("\x1b", "\x07", "\x9b", "\u202e")


class Started(Exception):
    """A run was about to start: the input was accepted."""


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise Started()

    monkeypatch.setattr(headless, "run_headless", refuse)


@pytest.fixture
def base(make_preset) -> dict:
    return make_preset(max_steps=1, save_steps=0).model_dump(mode="json")


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def refused(code: int | None, err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    assert code == 2, err
    for fragment in fragments:  # rich wraps lines anywhere: compare without borders or spaces
        assert flat(fragment) in flat(err), (fragment, err)


def flat(text: str) -> str:
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


def cli_process(*argv: str, memory_gib: float = 2.0, timeout: float = 120) -> tuple[int, str]:
    """`python -m tui.cli ARGV` with its address space capped: an input that grows memory
    without bound fails here (MemoryError) instead of taking the machine down."""
    limit = int(memory_gib * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", *argv],
        cwd=ROOT,
        env=env,
        preexec_fn=cap,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stderr


# -- YAML aliases: bounded in presets and in --set values ----------------------------------------
def mapping_bomb(levels: int = 9) -> str:
    """870 bytes that expand to 10**levels values: each level aliases the one below ten times."""
    lines = ["name: bomb", "a0: &a0 {" + ", ".join(f"k{j}: x" for j in range(10)) + "}"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(10)) + "}")
    return "\n".join(lines) + "\n"


def sequence_bomb(levels: int = 9) -> str:
    lines = ["name: bomb", "description: &s0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &s{i} [" + ", ".join([f"*s{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("command", ["train", "estimate"])
def test_a_mapping_alias_bomb_is_refused(tmp_path: Path, command: str) -> None:
    preset = write(tmp_path / "bomb.yaml", mapping_bomb())
    assert preset.stat().st_size < 1000
    code, err = cli_process(command, str(preset), *(["--no-tui"] if command == "train" else []))
    refused(code, err, "bomb.yaml", "aliases expand to more than 100,000 values")


def test_a_sequence_bomb_is_refused_when_a_set_is_given(tmp_path: Path) -> None:
    preset = write(tmp_path / "seq.yaml", sequence_bomb())
    code, err = cli_process("estimate", str(preset), "--set", "training.max_steps=2")
    refused(code, err, "seq.yaml", "aliases expand")


def test_an_alias_bomb_in_a_set_value_is_refused() -> None:
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    code, err = cli_process(
        "estimate", "smollm2-demo", "--set", f"description=[{', '.join(levels)}]"
    )
    refused(code, err, "--set description", "aliases expand")


def test_an_alias_that_contains_itself_is_refused(tmp_path: Path, capsys, no_run) -> None:
    # Before: with any --set, copying the preset recursed until a RecursionError traceback.
    preset = write(tmp_path / "loop.yaml", "name: loop\ndescription: &a [*a]\n")
    code = main(["estimate", str(preset), "--set", "training.max_steps=2"])
    refused(code, capsys.readouterr().err, "loop.yaml", "refers to the value that contains it")


def test_a_few_anchors_still_load(tmp_path: Path) -> None:
    from engine.config.presets import load_preset

    text = "name: anchors\nlora: {r: &r 8, lora_alpha: *r}\nexport: {formats: &f [adapter]}\n"
    preset, _ = load_preset(str(write(tmp_path / "ok.yaml", text)), ["training.max_steps=3"])
    assert (preset.lora.r, preset.lora.lora_alpha, preset.export.formats) == (8, 8, ["adapter"])


# -- numbers: every value the schema accepts survives what is done with it later -----------------
def numeric_fields() -> list[tuple[tuple[str, str], Any]]:
    """((section, key), field info) of every int or float field of the schema's sections."""
    found = []
    for section, info in Preset.model_fields.items():
        model = info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for key, field in model.model_fields.items():
            if is_number(field.annotation):
                found.append(((section, key), field))
    return found


def is_number(annotation: Any) -> bool:
    return annotation in (int, float) or any(is_number(arg) for arg in get_args(annotation))


def upper_bound(field: Any) -> float | None:
    for item in field.metadata:
        for name in ("le", "lt"):
            bound = getattr(item, name, None)
            if bound is not None:
                return bound if name == "le" else bound - (1 if bound > 1 else bound / 1000)
    return None


NUMERIC = numeric_fields()
# Checked by their own validators (the batch size), bounded item by item (a list of weights), or
# meaningless past their range (seed).
OWN_VALIDATOR = {("training", "per_device_train_batch_size"), ("preference", "loss_weights")}


def test_every_number_in_the_schema_has_an_upper_bound() -> None:
    # Before: num_train_epochs, lora_alpha, max_steps and ten others had none.
    unbounded = [
        key for key, field in NUMERIC if key not in OWN_VALIDATOR and not upper_bound(field)
    ]
    assert not unbounded, unbounded


def largest(key: tuple[str, str], field: Any) -> float:
    if key in OWN_VALIDATOR:
        return 65_536
    bound = upper_bound(field)
    assert bound is not None
    return int(bound) if "int" in str(field.annotation) else bound


@FUZZ
@given(picked=st.sets(st.sampled_from([key for key, _ in NUMERIC]), min_size=1, max_size=6))
def test_the_largest_accepted_numbers_survive_the_estimator(picked: set) -> None:
    from engine.config.presets import load_preset
    from engine.plan.estimate import estimate
    from engine.plan.gpus import gpu_spec

    fields = dict(NUMERIC)
    overrides = [
        f"{section}.{key}={largest((section, key), fields[section, key])!r}"
        for section, key in sorted(picked)
    ]
    overrides = [item for item in overrides if not item.startswith("training.eval_steps")]
    try:
        preset, _ = load_preset("smollm2-demo", overrides)
    except ConfigError as error:  # a combination (e.g. warmup past the steps) is fine to refuse
        assert "Traceback" not in str(error)
        return
    for gpu in (None, gpu_spec("h100-80gb")):
        estimate(preset, gpu, 2.0, dataset_rows=384)


@FUZZ
@given(entry=st.sampled_from(NUMERIC), huge=st.sampled_from([1e308, 1e30, 10**40]))
def test_numbers_past_the_bound_are_refused_with_their_key(entry, huge: float) -> None:
    (section, key), _field = entry
    with pytest.raises(ConfigError) as caught:
        from engine.config.presets import load_preset

        load_preset("smollm2-demo", [f"{section}.{key}={huge!r}"])
    assert f"--set {section}.{key}" in caught.value.message


def test_estimate_with_1e308_epochs_is_refused(capsys) -> None:
    # Before: OverflowError (cannot convert float infinity to integer), a traceback.
    code = main(
        [
            "estimate",
            "smollm2-demo",
            "--set",
            "training.max_steps=-1",
            "--set",
            "training.num_train_epochs=1e308",
        ]
    )
    refused(code, capsys.readouterr().err, "--set training.num_train_epochs", "less than or equal")


@pytest.mark.parametrize("setting", ["lora.lora_alpha=1e308", "training.num_train_epochs=1e308"])
def test_train_refuses_huge_numbers_before_the_run(
    base: dict, tmp_path: Path, capsys, no_run, setting: str
) -> None:
    # Before: accepted, then exit 1 after the model loaded ("cannot be converted to type float").
    preset = write(tmp_path / "p.yaml", base)
    code = main(
        ["train", str(preset), "--no-tui", "--run-dir", str(tmp_path / "runs"), "--set", setting]
    )
    refused(code, capsys.readouterr().err, f"--set {setting.split('=')[0]}")
    assert not (tmp_path / "runs").exists()


@FUZZ
@given(entry=st.sampled_from(NUMERIC), value=st.booleans())
def test_true_or_false_is_not_a_number(entry, value: bool) -> None:
    # Before: `max_steps: true` meant one step, `num_train_epochs: false` zero passes...
    (section, key), _field = entry
    from engine.config.presets import validate

    with pytest.raises(ConfigError) as caught:
        validate({section: {key: value}}, source="p.yaml")
    wanted = f"p.yaml {section}.{key}: must be a number, not true or false (got {value})"
    assert wanted in caught.value.problems


# -- --set on a whole section --------------------------------------------------------------------
def test_set_a_section_to_one_value_is_refused(capsys) -> None:
    code = main(["estimate", "smollm2-demo", "--set", "training=1"])
    refused(code, capsys.readouterr().err, "--set training=1", "section", "--set training.")


def test_set_a_section_to_a_mapping_keeps_its_other_keys() -> None:
    # Before: --set 'training={max_steps: 3}' replaced the section: the demo's learning rate,
    # schedule and checkpoints went back to the defaults without a word.
    from engine.config.presets import load_preset

    demo, _ = load_preset("smollm2-demo")
    preset, _ = load_preset("smollm2-demo", ["training={max_steps: 3}"])
    assert preset.training.max_steps == 3
    assert preset.training.model_dump(exclude={"max_steps"}) == demo.training.model_dump(
        exclude={"max_steps"}
    )


# -- files that are not regular files ------------------------------------------------------------
def read_in_thread(path: Path) -> BaseException | object:
    """load_records in a thread: a FIFO would block its open forever."""
    outcome: list[BaseException | object] = []

    def target() -> None:
        try:
            outcome.append(load_records(str(path), "train"))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():  # unblock the reader, then fail
        with open(path, "wb"):
            pass
        thread.join(timeout=5)
        pytest.fail(f"reading {path} blocked")
    return outcome[0]


def test_a_dataset_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    error = read_in_thread(fifo)
    assert isinstance(error, DatasetError), error
    assert "rows.jsonl is a named pipe (FIFO), not a regular file" in error.message
    assert error.exit_code == 2


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_a_dataset_symlink_to_a_device_is_refused(tmp_path: Path, device: str, suffix: str) -> None:
    link = tmp_path / f"rows{suffix}"
    link.symlink_to(device)
    error = read_in_thread(link)
    assert isinstance(error, DatasetError), error
    assert f"(a symlink to {device}) is a character device" in error.message


def test_a_dataset_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    target = tmp_path / "real.jsonl"
    target.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    (tmp_path / "link.jsonl").symlink_to(target)
    rows = load_records(str(tmp_path / "link.jsonl"), "train[1:]")
    assert rows == [{"text": "b"}] and rows.row_numbers == [3]


@pytest.mark.parametrize(
    ("kind", "fragment"), [("fifo", "is a named pipe (FIFO)"), ("folder", "is a folder")]
)
def test_a_preset_that_is_not_a_file_says_what_it_is(
    tmp_path: Path, capsys, no_run, kind: str, fragment: str
) -> None:
    # Before: "Preset file not found", for a path that exists.
    path = tmp_path / "p.yaml"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    code = main(["train", str(path), "--no-tui", "--run-dir", str(tmp_path / "runs")])
    refused(code, capsys.readouterr().err, f"{path} {fragment}, not a regular file")


def test_a_fifo_among_user_presets_does_not_block_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.config.presets import list_presets

    monkeypatch.setenv("FINETTY_PRESETS", str(tmp_path))
    os.mkfifo(tmp_path / "pipe.yaml")
    found: list[Any] = []
    thread = threading.Thread(target=lambda: found.extend(list_presets()), daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():
        with open(tmp_path / "pipe.yaml", "wb"):
            pass
        pytest.fail("listing presets blocked on a FIFO")
    assert {info.name: info.description for info in found}["pipe"] == "(unreadable)"


# -- CSV fields and huge rows ----------------------------------------------------------------------
def test_a_csv_field_over_128_kib_is_read(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "big.csv"
    path.write_text('instruction,output\n"' + "a" * 300_000 + '",b\n', encoding="utf-8")
    before = csv.field_size_limit()
    rows = load_records(str(path), "train")
    assert len(rows[0]["instruction"]) == 300_000 and rows[0]["output"] == "b"
    assert csv.field_size_limit() == before  # the module-wide limit is left as it was


WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
LONG_TEXT = st.one_of(
    st.lists(WORDS, min_size=60, max_size=400).map(" ".join),
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
        min_size=300,
        max_size=3000,
    ),
    st.lists(
        st.sampled_from(["a", "ab", " ", "\n", "  ", "é", "日本", "🙂", "x" * 40]),
        min_size=50,
        max_size=600,
    ).map("".join),
)


def whole_then_cut(example: Any, max_length: int) -> tuple[list[int], list[int]]:
    ids, labels = list(example.input_ids[:max_length]), list(example.labels[:max_length])
    if labels:
        labels[0] = IGNORE_INDEX
    return ids, labels


@FUZZ
@given(text=LONG_TEXT, max_length=st.sampled_from([16, 24, 64]))
def test_cutting_text_before_tokenizing_keeps_the_same_tokens(smol_tokenizer, text, max_length):
    cut = encode_text(smol_tokenizer, text, max_length)
    whole = encode_text(smol_tokenizer, text, 10**7)
    assert (cut.input_ids, cut.labels) == whole_then_cut(whole, max_length)
    assert cut.truncated == (len(whole) > max_length)


@FUZZ
@given(
    prompt=LONG_TEXT,
    reply=LONG_TEXT,
    max_length=st.sampled_from([16, 64, 200]),
    train_on=st.sampled_from(["responses", "all"]),
    template=st.sampled_from(["chatml", "llama-3", "alpaca"]),
)
def test_cutting_a_conversation_before_tokenizing_keeps_tokens_and_labels(
    smol_tokenizer, prompt, reply, max_length, train_on, template
):
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    jinja = CHAT_TEMPLATES[template]
    cut = encode_conversation(smol_tokenizer, messages, jinja, train_on, max_length)
    whole = encode_conversation(smol_tokenizer, messages, jinja, train_on, 10**7)
    assert (cut.input_ids, cut.labels) == whole_then_cut(whole, max_length)
    assert cut.truncated == (len(whole) > max_length)


class Measured:
    """The real tokenizer, recording how many characters each call hands it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.lengths.append(len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("train_on", ["responses", "all", "text"])
def test_a_huge_row_is_tokenized_only_as_far_as_max_seq_length(smol_tokenizer, train_on) -> None:
    # Before: the whole 5 MB row went to the Rust tokenizer (200 MB aborted it, SIGABRT).
    huge = "word " * 1_000_000
    measured = Measured(smol_tokenizer)
    if train_on == "text":
        example = encode_text(measured, huge, 64)
    else:
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": huge}]
        example = encode_conversation(measured, messages, CHAT_TEMPLATES["chatml"], train_on, 64)
    assert len(example) == 64 and example.truncated
    assert max(measured.lengths) < 10_000, measured.lengths


def test_a_20_mb_row_trains_in_bounded_memory(base: dict, tmp_path: Path) -> None:
    # Before: a 20 MB row took 4 GB and 45 s to tokenize (and 200 MB aborted the tokenizer).
    rows = tmp_path / "huge.jsonl"
    with rows.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "lorem ipsum " * 1_700_000}) + "\n")
        for i in range(7):
            handle.write(json.dumps({"text": f"row {i} is short"}) + "\n")
    data = json.loads(json.dumps(base))
    data["dataset"].update(path=str(rows), val_size=0, train_on="all")
    preset = write(tmp_path / "huge.yaml", data)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tui.cli",
            "train",
            str(preset),
            "--no-tui",
            "--run-dir",
            str(tmp_path / "runs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert done.returncode == 0, done.stderr[-3000:]
    events = (next((tmp_path / "runs" / "tiny").iterdir()) / "events.jsonl").read_text()
    stats = next(e for e in map(json.loads, events.splitlines()) if e["type"] == "dataset_stats")
    assert (stats["truncated"], stats["max_length"], stats["rows"]) == (1, 64, 8)
    if before / 2**20 < 2.0:  # an earlier child may have set the high-water mark already
        assert peak_gib < 2.0, f"peak RSS {peak_gib:.2f} GiB"


# -- silent surprises ------------------------------------------------------------------------------
def test_the_builtin_dataset_refuses_a_split_it_does_not_have() -> None:
    # Before: any split name was accepted and the training rows used.
    with pytest.raises(DatasetError, match="one split to train on, 'train'; 'test' was asked"):
        load_records(BUILTIN_DATASET, "test")


def test_the_builtin_dataset_honours_a_slice() -> None:
    # Before: train[:5] trained on all 384 rows.
    assert len(load_records(BUILTIN_DATASET, "train[:5]")) == 5
    assert len(load_records(BUILTIN_DATASET, "train")) == 384


def test_text_detected_with_train_on_responses_is_refused(smol_tokenizer) -> None:
    # Before: plain text trained on every token, though train_on said replies only.
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(
            smol_tokenizer,
            path="notes.jsonl",
            split="train",
            fmt="auto",
            chat_template="chatml",
            train_on="responses",
            max_length=64,
            packing=False,
            val_size=0,
            seed=0,
            records=[{"text": "a document"}, {"text": "another"}],
        )
    assert "notes.jsonl" in caught.value.message and "train_on is responses" in caught.value.message
    assert "train_on: all" in (caught.value.hint or "")


@pytest.mark.parametrize(
    ("targets", "suggested"), [(["nonexistent"], None), (["q_prj"], "Did you mean q_proj?")]
)
def test_an_unknown_target_module_suggests_real_layer_names(
    tiny_model_dir: Path, targets: list[str], suggested: str | None
) -> None:
    # Before: the hint listed "0, 1, 10, 11, ..." (layer numbers).
    from transformers import AutoModelForCausalLM

    from engine.models.adapters import LoraSettings, prepare_for_training

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError) as caught:
        prepare_for_training(
            model,
            method="lora",
            lora=LoraSettings(r=2, target_modules=targets),
            gradient_checkpointing=False,
        )
    hint = caught.value.hint or ""
    assert "q_proj, k_proj, v_proj, o_proj" in hint and "lm_head" in hint, hint
    assert not any(part.strip(" .").isdigit() for part in hint.split(",")), hint
    if suggested:
        assert hint.startswith(suggested), hint


# -- escape codes in user text ---------------------------------------------------------------------
@given(text=st.text())
def test_printable_leaves_no_control_character(text: str) -> None:
    shown = printable(text)
    assert not any(ch in shown for ch in ESCAPES)
    assert all(ch.isprintable() or ch in "\n\t" for ch in shown if ord(ch) < 0xA0)
    clean = "".join(ch for ch in text if ch.isprintable() or ch in "\n\t")
    assert printable(clean) == clean


def test_an_escape_code_in_a_preset_description_is_shown_not_obeyed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, no_run
) -> None:
    monkeypatch.setenv("FINETTY_PRESETS", str(tmp_path))
    write(tmp_path / "evil.yaml", {"name": "evil", "description": "\x1b[2J\x1b]0;owned\x07 hi"})
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert not any(ch in out for ch in ESCAPES)
    assert "\\x1b[2J\\x1b]0;owned\\x07 hi" in out
    code = main(["train", "evil", "--no-tui", "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    refused(code, err, "description: holds a control character (\\x1b at character 1)")
    assert not any(ch in err for ch in ESCAPES)


def test_escape_codes_in_dataset_keys_never_reach_the_screen_or_the_log(
    base: dict, tmp_path: Path, capsys
) -> None:
    rows = tmp_path / "keys.jsonl"
    rows.write_text(json.dumps({"\x1b[31mred\x1b[0m": 1, "\u202eevil": 2}) + "\n")
    data = json.loads(json.dumps(base))
    data["dataset"].update(path=str(rows), val_size=0)
    preset = write(tmp_path / "keys.yaml", data)
    code = main(["train", str(preset), "--no-tui", "--run-dir", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    refused(code, captured.err, "keys.jsonl", "cannot tell the dataset format", "\\x1b[31mred")
    written = "".join(p.read_text() for p in (tmp_path / "runs").rglob("*") if p.is_file())
    for text in (captured.err, captured.out, written):
        assert not any(ch in text for ch in ESCAPES), text[-2000:]


# -- presets cite only what ships ------------------------------------------------------------------
def test_bundled_presets_cite_only_files_in_the_repository() -> None:
    # Before: a preset's description cited DESIGN.md, which is not in the repository.
    for path in sorted((ROOT / "presets").glob("*.yaml")):
        for cited in re.findall(r"[\w./-]+\.(?:md|yaml|py)\b", path.read_text()):
            assert (ROOT / cited).exists() or (ROOT / "presets" / cited).exists(), (
                path.name,
                cited,
            )

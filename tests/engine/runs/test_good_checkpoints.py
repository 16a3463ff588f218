"""Only good checkpoints (issue 18): a diverging update is never saved, and one damaged
checkpoint never blocks a resume: it is refused by name and the one before it is used."""

from __future__ import annotations

import errno
import functools
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from engine.config.derived import TrainSettings
from engine.core.errors import RunDirError, TrainingError
from engine.core.events import Alarm, CheckpointSaved, Failed, LogLine, RecordingSink, RunStarted
from engine.runs import checkpoint
from engine.runs.checkpoint import TrainerState
from engine.train.run import Run, find_resume_checkpoint

# -- non-finite updates ---------------------------------------------------------------------------

# lora_alpha 1e6 with learning rate 1 (both within the schema's bounds): on the tiny model the
# gradient norm is finite at step 1 (8e4) and NaN at step 2, whose update poisons every weight.
DIVERGING = {"learning_rate": 1.0}


def _diverging(make_preset, **training):
    preset = make_preset(**{**DIVERGING, **training})
    return preset.model_copy(update={"lora": preset.lora.model_copy(update={"lora_alpha": 1e6})})


def _all_finite(folder: Path) -> bool:
    tensors = load_file(str(folder / "trainable.safetensors"))
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    named = [*tensors.items(), *checkpoint.optimizer_tensors(state)]
    return not checkpoint.non_finite(named)


@pytest.mark.parametrize("defer", [False, True], ids=["read-at-once", "read-a-step-late"])
def test_a_diverging_update_stops_the_run_before_it_is_saved(
    make_preset, tmp_path: Path, monkeypatch, defer: bool
) -> None:
    """Before: checkpoint-2 held 28 of 28 NaN tensors and the run said "the last good
    checkpoint is kept". Both ways of reading the figures (a GPU reads them a step late)."""
    monkeypatch.setattr(
        "engine.config.derived.TrainSettings", functools.partial(TrainSettings, defer_metrics=defer)
    )
    sink = RecordingSink()
    result = Run(
        _diverging(make_preset, max_steps=4, save_steps=1), sink, runs_root=tmp_path
    ).execute()
    assert result.status == "failed" and result.exit_code == 1
    assert isinstance(result.error, TrainingError)
    assert "gradient norm became nan at step 2" in result.error.message
    assert "checkpoint-1" in result.error.message
    alarms = [a for a in sink.of_type(Alarm) if a.kind == "non_finite"]
    assert [a.step for a in alarms] == [2] and alarms[0].remedy
    assert [c.step for c in sink.of_type(CheckpointSaved)] == [1]
    saved = checkpoint.complete_checkpoints(result.run_dir / "checkpoints")
    assert [p.name for p in saved] == ["checkpoint-1"] and all(map(_all_finite, saved))
    assert not (result.run_dir / "final").exists()


def test_a_run_diverging_at_its_last_step_writes_no_final_model(
    make_preset, tmp_path: Path
) -> None:
    """Before: exit 0, "finished", with an all-NaN adapter in final/."""
    sink = RecordingSink()
    result = Run(
        _diverging(make_preset, max_steps=2, save_steps=0), sink, runs_root=tmp_path
    ).execute()
    assert result.status == "failed" and result.exit_code == 1
    assert (
        "step 2" in result.error.message and "No checkpoint had been saved" in result.error.message
    )
    assert [a.kind for a in sink.of_type(Alarm)] == ["non_finite"]
    assert not (result.run_dir / "final").exists()
    assert not (result.run_dir / ".tmp-final").exists()


def _parts(poison: str | None = None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with torch.no_grad():
        if poison == "weight":
            model.weight[0, 1] = float("nan")
        elif poison == "optimizer":
            optimizer.state[model.bias]["exp_avg_sq"][0] = float("inf")
    return model, optimizer, scheduler


def _save(directory: Path, step: int, poison: str | None = None) -> Path:
    model, optimizer, scheduler = _parts(poison)
    return checkpoint.save_checkpoint(
        directory,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=None,
        state=TrainerState(step, 0, step, 10 * step, 1.0),
        is_adapter=False,
        keep=None,
    )


@pytest.mark.parametrize("poison", ["weight", "optimizer"])
def test_a_checkpoint_with_non_finite_tensors_is_never_written(tmp_path: Path, poison) -> None:
    _save(tmp_path, 1)
    with pytest.raises(TrainingError, match="step 2 was not written") as caught:
        _save(tmp_path, 2, poison)
    assert "NaN or infinite" in caught.value.message
    assert (
        "weight" in caught.value.message if poison == "weight" else "state[" in caught.value.message
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_a_final_model_with_non_finite_weights_is_never_written(
    make_preset, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = Run(make_preset(), RecordingSink(), runs_root=tmp_path)
    try:
        run.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        with torch.no_grad():
            model.model.norm.weight[3] = float("inf")
        with pytest.raises(TrainingError, match="final model") as caught:
            run._write_final(model)
    finally:
        run.dir_sink.close()
        if getattr(run, "lock", None) is not None:
            run.lock.release()
    assert "model.norm.weight" in caught.value.message
    assert not (run.run_dir / "final").exists() and not (run.run_dir / ".tmp-final").exists()


# -- damaged checkpoints --------------------------------------------------------------------------


def _truncate(share: float) -> Callable[[Path], None]:
    def cut(file: Path) -> None:
        data = file.read_bytes()
        file.write_bytes(data[: int(len(data) * share)])

    return cut


def _write(text: str | bytes) -> Callable[[Path], None]:
    def put(file: Path) -> None:
        file.write_bytes(text.encode() if isinstance(text, str) else text)

    return put


def _edit_state(key: str, value: object) -> Callable[[Path], None]:
    def edit(file: Path) -> None:
        data = json.loads(file.read_text())
        data[key] = value
        file.write_text(json.dumps(data))

    return edit


def _blocked_pickle(file: Path) -> None:
    torch.save({"torch": torch.get_rng_state(), "code": os.getcwd}, file)


# (file damaged, how, words the refusal must contain besides the file's path)
DAMAGE = {
    "empty safetensors": ("trainable.safetensors", _write(b""), "truncated or damaged"),
    "truncated safetensors": ("trainable.safetensors", _truncate(0.6), "truncated or damaged"),
    "NaN weights": ("trainable.safetensors", None, "NaN or infinite"),
    "state `{`": ("trainer_state.json", _write("{"), "not valid JSON"),
    "state: string step": ("trainer_state.json", _edit_state("step", "3"), 'step is "3"'),
    "state: step 999999": ("trainer_state.json", _edit_state("step", 999999), "step is 999999"),
    "state: step -5": ("trainer_state.json", _edit_state("step", -5), "step is -5"),
    "state: a list": ("trainer_state.json", _write("[1, 2]"), "JSON object"),
    "state: extra key": ("trainer_state.json", _edit_state("stepp", 3), "unknown keys stepp"),
    "state: NaN best loss": (
        "trainer_state.json",
        _edit_state("best_loss", float("nan")),
        "best_loss",
    ),
    "truncated optimizer": ("optimizer.pt", _truncate(0.5), "truncated"),
    "empty optimizer": ("optimizer.pt", _write(b""), "truncated"),
    "optimizer of another model": ("optimizer.pt", None, "another optimizer"),
    "truncated scheduler": ("scheduler.pt", _truncate(0.3), "truncated"),
    "truncated rng": ("rng.pt", _truncate(0.5), "truncated"),
    "rng: a blocked pickle": ("rng.pt", _blocked_pickle, "can run code"),
    "optimizer: ten zero bytes": ("optimizer.pt", _write(b"\0" * 10), "damaged"),
    "rng: a plain pickle": ("rng.pt", _write(pickle.dumps({"torch": [1, 2]})), "damaged"),
    "rng: wrong tensor": ("rng.pt", None, "not a torch random state"),
    "python rng `{`": ("rng_python.json", _write("{"), "not valid JSON"),
    "python rng: wrong shape": ("rng_python.json", _write("[3, [1, 2], null]"), "random state"),
    "missing optimizer": ("optimizer.pt", Path.unlink, "is missing"),
}


def _damage(folder: Path, kind: str) -> str:
    name, how, _ = DAMAGE[kind]
    file = folder / name
    if kind == "NaN weights":
        tensors = load_file(str(file))
        tensors["weight"][0, 0] = float("nan")
        from safetensors.torch import save_file

        save_file(tensors, str(file))
    elif kind == "optimizer of another model":
        other = torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))])
        torch.save(other.state_dict(), file)
    elif kind == "rng: wrong tensor":
        torch.save({"torch": torch.zeros(3)}, file)
    else:
        how(file)
    return name


def _fresh_load(path: Path) -> tuple[TrainerState, torch.nn.Module]:
    model, optimizer, scheduler = _parts()
    with torch.no_grad():
        model.weight.fill_(7.0)  # what a refused checkpoint must leave untouched
    state = checkpoint.load_checkpoint(
        path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None, max_step=10
    )
    return state, model


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_by_name_before_anything_is_applied(
    tmp_path: Path, kind: str
) -> None:
    """Before: SafetensorError, JSONDecodeError, TypeError, EOFError or torch's own message
    suggesting weights_only=False; a step of 999999 or -5 was taken as it was."""
    folder = _save(tmp_path, 3)
    name = _damage(folder, kind)
    model, optimizer, scheduler = _parts()
    with torch.no_grad():
        model.weight.fill_(7.0)
    with pytest.raises(RunDirError) as caught:
        checkpoint.load_checkpoint(
            folder, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None, max_step=10
        )
    message = caught.value.message
    assert str(folder / name) in message and DAMAGE[kind][2] in message, message
    assert "weights_only" not in str(caught.value)  # never torch's unsafe way round its refusal
    assert "can run code" not in message or "blocked" in kind
    assert caught.value.hint and caught.value.exit_code == 2
    assert bool((model.weight == 7.0).all())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(
        [
            "trainable.safetensors",
            "optimizer.pt",
            "scheduler.pt",
            "rng.pt",
            "rng_python.json",
            "trainer_state.json",
        ]
    ),
    keep=st.floats(0.0, 0.999),
    garbage=st.binary(max_size=40),
)
def test_any_truncated_file_falls_back_to_the_previous_checkpoint(
    tmp_path_factory, name: str, keep: float, garbage: bytes
) -> None:
    """A file of the newest checkpoint cut anywhere (and maybe followed by junk): the resume
    names it and uses the checkpoint before, whose weights and step it restores exactly."""
    run_dir = tmp_path_factory.mktemp("run")
    directory = run_dir / "checkpoints"
    _save(directory, 1)
    newest = _save(directory, 2)
    file = newest / name
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)] + garbage)
    sink = RecordingSink()
    loaded: dict[str, object] = {}

    def load(path: Path) -> None:
        loaded["state"], loaded["model"] = _fresh_load(path)

    try:
        used = find_resume_checkpoint(run_dir, sink, load)
    except RunDirError:
        pytest.fail("the intact checkpoint-1 was not used")
    if used.name == "checkpoint-2":
        return  # the cut left a file that still reads the same (e.g. junk after JSON's end)
    assert used.name == "checkpoint-1" and loaded["state"].step == 1
    warnings = [e.text for e in sink.of_type(LogLine) if e.level == "warning"]
    assert len(warnings) == 1 and "checkpoint-2" in warnings[0] and str(file) in warnings[0]
    expected, _, _ = _parts()
    assert torch.equal(loaded["model"].weight, expected.weight)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(
        ["step", "epoch", "examples_done_in_epoch", "tokens_seen", "elapsed_s", "best_loss"]
    ),
    value=JSON_VALUES,
)
def test_any_value_in_trainer_state_is_taken_as_is_or_refused_by_name(
    tmp_path_factory, key: str, value: object
) -> None:
    """Before: a string step raised TypeError at the first comparison, a list or a float step
    crashed later, and 999999 or -5 were taken as they were."""
    folder = _save(tmp_path_factory.mktemp("ckpt"), 3)
    _edit_state(key, value)(folder / "trainer_state.json")
    try:
        state, _ = _fresh_load(folder)
    except RunDirError as refused:
        assert str(folder / "trainer_state.json") in refused.message and key in refused.message
        return
    taken = getattr(state, key)
    assert taken == value and type(taken) is type(value)
    assert (not isinstance(value, bool) and value is not None) or key == "best_loss"
    if key == "step":
        assert value == 3


def test_no_good_checkpoint_is_a_clear_error_naming_each(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    for step, kind in ((1, "empty safetensors"), (2, "state `{`")):
        _damage(_save(directory, step), kind)
    with pytest.raises(RunDirError) as caught:
        find_resume_checkpoint(tmp_path, RecordingSink(), lambda path: _fresh_load(path) and None)
    message = caught.value.message
    assert "None of the 2 checkpoints" in message
    assert "checkpoint-1" in message and "trainable.safetensors" in message
    assert "checkpoint-2" in message and "trainer_state.json" in message
    assert caught.value.exit_code == 2


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_model_dir: Path):
    """A tiny run stopped at step 3 with checkpoints 1, 2 and 3, and its preset."""
    from engine.config.presets import validate

    dataset = tmp_path_factory.mktemp("data") / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Repeat {i}."},
                {"role": "assistant", "content": f"{i}"},
            ]
        }
        for i in range(24)
    ]
    dataset.write_text("\n".join(map(json.dumps, rows)) + "\n")
    preset = validate(
        {
            "name": "tiny",
            "model": {
                "name_or_path": str(tiny_model_dir),
                "dtype": "float32",
                "max_seq_length": 64,
            },
            "dataset": {"path": str(dataset), "format": "auto", "val_size": 4},
            "method": "lora",
            "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1},
            "training": {
                "learning_rate": 5e-3,
                "per_device_train_batch_size": 4,
                "max_steps": 5,
                "save_steps": 1,
                "seed": 0,
            },
        }
    )

    class StopAt3(RecordingSink):
        run: Run

        def emit(self, event) -> None:
            super().emit(event)
            if isinstance(event, CheckpointSaved) and event.step == 3:
                self.run.control.stop()

    sink = StopAt3()
    sink.run = Run(preset, sink, runs_root=tmp_path_factory.mktemp("runs"))
    result = sink.run.execute()
    assert result.status == "stopped"
    names = [p.name for p in checkpoint.complete_checkpoints(result.run_dir / "checkpoints")]
    assert names[-2:] == ["checkpoint-2", "checkpoint-3"]
    return preset, result.run_dir


@pytest.mark.parametrize(
    "kind", ["truncated safetensors", "state: string step", "rng: a blocked pickle"]
)
def test_a_run_resumes_from_the_checkpoint_before_a_damaged_one(
    stopped_run, tmp_path: Path, kind: str
) -> None:
    """Before: exit 1, "FAILED (internal): SafetensorError/TypeError/UnpicklingError"."""
    preset, original = stopped_run
    run_dir = tmp_path / original.name
    shutil.copytree(original, run_dir)
    name = _damage(run_dir / "checkpoints" / "checkpoint-3", kind)
    sink = RecordingSink()
    result = Run(preset, sink, resume_dir=run_dir).execute()
    assert result.status == "finished", sink.of_type(Failed)
    assert sink.of_type(RunStarted)[0].resumed_from_step == 2
    warnings = [e.text for e in sink.of_type(LogLine) if e.level == "warning"]
    assert any("checkpoint-3" in text and name in text for text in warnings), warnings
    log = (run_dir / "log.txt").read_text()
    assert "Skipping checkpoint checkpoint-3" in log and name in log


def test_a_run_whose_checkpoints_are_all_damaged_fails_with_exit_2(
    stopped_run, tmp_path: Path
) -> None:
    preset, original = stopped_run
    run_dir = tmp_path / original.name
    shutil.copytree(original, run_dir)
    for folder in checkpoint.complete_checkpoints(run_dir / "checkpoints"):
        _damage(folder, "truncated optimizer")
    sink = RecordingSink()
    result = Run(preset, sink, resume_dir=run_dir).execute()
    assert result.status == "failed" and result.exit_code == 2
    failed = sink.of_type(Failed)[0]
    assert failed.kind == "run_dir" and "optimizer.pt" in failed.message
    assert "Traceback" not in (run_dir / "log.txt").read_text()


# -- hints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocker", ["checkpoints", "checkpoints/checkpoint-2"])
def test_a_file_in_the_way_of_a_checkpoint_is_named_not_blamed_on_the_disk(
    tmp_path: Path, blocker: str
) -> None:
    """Before: "Free disk space (check with `df -h ...`)" for a file where a folder belongs."""
    directory = tmp_path / "checkpoints"
    if blocker != "checkpoints":
        _save(directory, 1)
    (tmp_path / blocker).write_text("not a folder")
    with pytest.raises(TrainingError) as caught:
        _save(directory, 2)
    hint = caught.value.hint
    assert str(tmp_path / blocker) in hint and "is a file" in hint
    assert "disk space" not in hint and "df -h" not in hint
    assert (tmp_path / blocker).read_text() == "not a folder"  # nothing on disk is lost


# -- export verification --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untied_model(tokenizer_dir: Path):
    """A tiny random Llama whose head is not the embedding: a NaN embedding row then reaches
    only the positions after that token, not every logit."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def test_export_verification_refuses_a_model_whose_logits_are_not_finite(untied_model) -> None:
    """Before: the reference was built from NaN logits and every check compared NaN to NaN."""
    import copy

    from engine.export import verify
    from engine.export.files import VerificationError

    model, tokenizer = untied_model
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight[0] = float("inf")
    with pytest.raises(VerificationError, match="NaN or infinite logits") as caught:
        verify.build_reference(broken, tokenizer)
    assert "nothing was exported" in caught.value.message and caught.value.hint


def test_export_verification_fails_a_candidate_non_finite_on_one_prompt(untied_model) -> None:
    """Before: Python's max() over the prompts' differences dropped the NaN of prompt 2, and
    the check failed only as a greedy mismatch with a finite max |Δlogit|."""
    import copy

    from engine.export import verify

    model, tokenizer = untied_model
    reference = verify.build_reference(model, tokenizer)
    first, second, third = (set(ids[0].tolist()) for ids in verify.encode_prompts(tokenizer))
    token = min(second - first - third)
    candidate = copy.deepcopy(model)
    with torch.no_grad():
        candidate.model.embed_tokens.weight[token] = float("nan")
    check = verify.compare(candidate, reference, "merged model vs base + adapter", "merged-float32")
    assert not check.passed and "NaN or infinite" in check.describe(), check.describe()
    assert not check.finite
    assert verify.compare(model, reference, "same model", "merged-float32").passed


def test_a_blocked_pickle_in_model_weights_never_suggests_the_unsafe_option(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Before: "Weights only load failed ... Re-running torch.load with weights_only set to
    False will likely succeed", with a hint about incomplete model folders."""
    from transformers import AutoModelForCausalLM

    from engine.core.errors import ModelLoadError
    from engine.models import loading

    folder = tmp_path / "pickled"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        if not item.name.endswith(".safetensors"):
            shutil.copy(item, folder / item.name)
    weights = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict())
    torch.save({**weights, "payload": os.system}, folder / "pytorch_model.bin")
    source = loading.resolve_source(str(folder), allow_pickle=True)
    with pytest.raises(ModelLoadError) as caught:
        loading.load_model(
            source, device="cpu", dtype=torch.float32, attention="sdpa", allow_pickle=True
        )
    error = caught.value
    assert str(folder) in error.message and "can run code" in error.message
    assert "weights_only" not in str(error) and "safetensors" in error.hint


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_diverging_update_on_the_gpu_stops_before_it_is_saved(
    make_preset, tmp_path: Path, dtype: str
) -> None:
    """The GPU's own path: figures read a step late (no host wait per step), bf16 autocast."""
    preset = _diverging(make_preset, max_steps=6, save_steps=1)
    preset = preset.model_copy(update={"model": preset.model.model_copy(update={"dtype": dtype})})
    sink = RecordingSink()
    result = Run(preset, sink, runs_root=tmp_path).execute()
    assert result.status == "failed" and result.exit_code == 1, result.error
    alarms = [a for a in sink.of_type(Alarm) if a.kind == "non_finite"]
    assert len(alarms) == 1 and f"at step {alarms[0].step}" in result.error.message
    saved = checkpoint.complete_checkpoints(result.run_dir / "checkpoints")
    assert all(int(p.name.split("-")[1]) < alarms[0].step for p in saved)
    assert all(map(_all_finite, saved)) and not (result.run_dir / "final").exists()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_checkpoint_folder_is_not_blamed_on_the_disk_filling_up(
    tmp_path: Path, monkeypatch, code: int
) -> None:
    """Before: "Free disk space (check with `df -h ...`)" for a read-only mount or a folder
    without write permission (what the OS says, raised where safetensors writes)."""
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    _save(tmp_path, 1)
    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    with pytest.raises(TrainingError) as caught:
        _save(tmp_path, 2)
    assert os.strerror(code) in caught.value.message
    assert "not writable" in caught.value.hint and "disk space" not in caught.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]

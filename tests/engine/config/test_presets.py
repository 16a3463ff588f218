"""Bundled presets, finding presets by name or path, --set overrides and the resolved dump.

Every bundled preset is validated here, as torchtune validates its configs. Fast: no model is
loaded, no torch is imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config.presets import (
    BUNDLED_DIR,
    PresetInfo,
    apply_overrides,
    find_preset,
    list_presets,
    load_preset,
    to_yaml,
    user_presets_dir,
    validate,
)
from engine.config.schema import Preset
from engine.core.errors import EXIT_BAD_INPUT, ConfigError

REPO = Path(__file__).resolve().parents[3]
BAD = REPO / "tests" / "data" / "presets"


def _bundled() -> list[PresetInfo]:
    """list_presets() with no user presets in the way (a developer's own could shadow ours)."""
    saved = os.environ.get("FINETTY_PRESETS")
    os.environ["FINETTY_PRESETS"] = str(REPO / "tests" / "data" / "no-such-dir")
    try:
        return list_presets()
    finally:
        if saved is None:
            del os.environ["FINETTY_PRESETS"]
        else:
            os.environ["FINETTY_PRESETS"] = saved


BUNDLED = _bundled()
BUNDLED_IDS = [info.name for info in BUNDLED]


@pytest.fixture(autouse=True)
def no_user_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own, empty user presets folder."""
    folder = tmp_path / "user-presets"
    folder.mkdir()
    monkeypatch.setenv("FINETTY_PRESETS", str(folder))
    return folder


# Bundled presets


def test_the_bundled_presets_are_all_listed() -> None:
    assert [info.name for info in BUNDLED] == sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))
    assert {"smollm2-demo", "llama-3.1-8b-qlora-finetome"} <= set(BUNDLED_IDS)
    assert len(BUNDLED) >= 10
    assert all(info.origin == "bundled" for info in BUNDLED)


@pytest.mark.parametrize("info", BUNDLED, ids=BUNDLED_IDS)
def test_a_bundled_preset_loads_and_validates(info: PresetInfo) -> None:
    preset, path = load_preset(info.name)
    assert path == info.path == BUNDLED_DIR / f"{info.name}.yaml"
    assert preset.name == info.name == path.stem
    assert preset.description and "\n" not in preset.description
    assert info.description == preset.description
    assert preset.uses_adapter
    assert preset.model.max_seq_length <= 4096


@pytest.mark.parametrize("info", BUNDLED, ids=BUNDLED_IDS)
def test_every_knob_in_a_bundled_preset_has_a_comment(info: PresetInfo) -> None:
    lines = info.path.read_text(encoding="utf-8").splitlines()
    knobs = [line for line in lines if re.match(r"^\s*\w+: \S", line)]
    bare = [line for line in knobs if " # " not in line and not line.startswith("description:")]
    assert not bare, f"{info.path.name}: say what each knob does: {bare}"


@pytest.mark.parametrize("info", BUNDLED, ids=BUNDLED_IDS)
def test_a_sized_preset_says_which_card_it_fits(info: PresetInfo) -> None:
    preset, _ = load_preset(info.name)
    for size in ("24", "80"):
        if info.name.endswith(f"-{size}gb"):
            assert f"fits a{'n' if size == '80' else ''} {size} GB card" in info.description
            assert preset.training.learning_rate == 2e-4
            assert preset.training.gradient_checkpointing
    if info.name.endswith("-80gb"):
        assert preset.method == "lora" and preset.model.dtype == "bfloat16"


@pytest.mark.parametrize("info", BUNDLED, ids=BUNDLED_IDS)
def test_a_gpu_preset_uses_a_hub_dataset_in_a_stated_format(info: PresetInfo) -> None:
    preset, _ = load_preset(info.name)
    if preset.model.name_or_path.startswith("embedded:"):
        return
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", preset.model.name_or_path)
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", preset.dataset.path)
    if preset.dataset.path == "yahma/alpaca-cleaned":
        assert preset.dataset.format == "alpaca"
    if preset.dataset.path == "mlabonne/FineTome-100k":
        assert preset.dataset.format in ("sharegpt", "auto")
    if preset.quantized:
        assert preset.method == "qlora" and preset.training.optim.endswith("8bit")


def test_the_cpu_demo() -> None:
    preset, _ = load_preset("smollm2-demo")
    assert preset.model.name_or_path == "embedded:smollm2-135m-instruct"
    assert (preset.model.dtype, preset.model.max_seq_length) == ("float32", 256)
    dataset = preset.dataset
    assert (dataset.path, dataset.format, dataset.chat_template) == (
        "builtin:finetty-skills",
        "messages",
        "auto",
    )
    assert (dataset.train_on, dataset.val_size) == ("responses", 0)
    assert preset.method == "lora" and not preset.quantized
    lora = preset.lora
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.target_modules) == (
        16,
        32,
        0,
        "all-linear",
    )
    training = preset.training
    assert training.learning_rate > 0  # being tuned: only its presence is pinned
    assert training.lr_scheduler_type == "cosine"
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (8, 1)
    assert (training.max_steps, training.warmup_steps) == (60, 5)
    assert (training.optim, training.logging_steps, training.seed) == ("adamw_torch", 1, 0)
    assert (training.save_steps, training.save_total_limit) == (20, 2)
    assert preset.export.formats == ["adapter"]


SEED_WALKTHROUGH = {
    "name": "llama-3.1-8b-qlora-finetome",
    "model": {
        "name_or_path": "unsloth/Meta-Llama-3.1-8B-bnb-4bit",
        "load_in_4bit": True,
        "dtype": "auto",
        "max_seq_length": 2048,
    },
    "dataset": {
        "path": "mlabonne/FineTome-100k",
        "split": "train[:10000]",
        "format": "auto",
        "chat_template": "chatml",
        "train_on": "responses",
        "packing": True,
        "val_size": 0.01,
    },
    "method": "qlora",
    "lora": {
        "r": 16,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": "all-linear",
        "use_rslora": True,
    },
    "training": {
        "learning_rate": 3.0e-4,
        "lr_scheduler_type": "linear",
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "num_train_epochs": 1,
        "optim": "adamw_8bit",
        "weight_decay": 0.01,
        "warmup_steps": 10,
        "gradient_checkpointing": True,
        "logging_steps": 1,
        "save_steps": 200,
        "seed": 0,
    },
    "export": {"formats": ["merged_16bit", "gguf_q8_0"]},
}


def test_the_seed_walkthrough_is_exactly_the_one_in_the_design() -> None:
    path = BUNDLED_DIR / "llama-3.1-8b-qlora-finetome.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data.pop("description")
    assert data == SEED_WALKTHROUGH


# The resolved dump


@pytest.mark.parametrize("info", BUNDLED, ids=BUNDLED_IDS)
def test_to_yaml_round_trips(info: PresetInfo, tmp_path: Path) -> None:
    preset, _ = load_preset(info.name)
    text = to_yaml(preset)
    again = validate(yaml.safe_load(text))
    assert again == preset
    assert to_yaml(again) == text
    path = tmp_path / f"{info.name}.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_preset(str(path))[0] == preset


def test_to_yaml_fills_in_every_default() -> None:
    data = yaml.safe_load(to_yaml(validate({"method": "qlora"})))
    assert list(data) == [
        name for name in Preset.model_fields if name not in ("grpo", "preference")
    ]
    for section in ("model", "dataset", "lora", "training", "export"):
        fields = Preset.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        assert list(data[section]) == list(fields)
    assert data["model"]["load_in_4bit"] is True


# --set overrides


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("training.learning_rate=1e-4", 1e-4),
        ("training.learning_rate=5.0e-5", 5e-5),
        ("training.max_steps=10", 10),
        ("training.num_train_epochs=2", 2.0),
        ("dataset.packing=true", True),
        ("dataset.packing=false", False),
        ("lora.target_modules=[q_proj, v_proj]", ["q_proj", "v_proj"]),
        ("export.formats=[adapter, gguf_q8_0]", ["adapter", "gguf_q8_0"]),
        ("model.dtype=bf16", "bfloat16"),
        ("dataset.split=train[:100]", "train[:100]"),
        ("training.per_device_train_batch_size=auto", "auto"),
        ("model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
        ("training.eval_steps=null", None),
    ],
)
def test_set_parses_values_as_yaml(item: str, expected: object) -> None:
    preset, _ = load_preset("smollm2-demo", [item])
    section, key = item.partition("=")[0].split(".")
    value = getattr(getattr(preset, section), key)
    assert value == expected and type(value) is type(expected)


def test_set_raw_values_keep_their_yaml_types() -> None:
    data = apply_overrides(
        {}, ["a.int=3", "a.float=0.5", "a.bool=true", "a.list=[1, x]", "a.empty="]
    )
    assert data == {"a": {"int": 3, "float": 0.5, "bool": True, "list": [1, "x"], "empty": ""}}


def test_set_applies_in_order_and_splits_at_the_first_equals() -> None:
    data = apply_overrides({}, ["name=a", "name=b", "dataset.split=train[:10]=x"])
    assert data == {"name": "b", "dataset": {"split": "train[:10]=x"}}


def test_set_does_not_change_the_data_it_was_given() -> None:
    data: dict[str, Any] = {"training": {"max_steps": 5, "extra": [1]}}
    result = apply_overrides(data, ["training.max_steps=6", "lora.r=8"])
    assert data == {"training": {"max_steps": 5, "extra": [1]}}
    assert result == {"training": {"max_steps": 6, "extra": [1]}, "lora": {"r": 8}}
    result["training"]["extra"].append(2)
    assert data["training"]["extra"] == [1]


def test_set_replaces_a_scalar_on_the_way_with_a_section() -> None:
    assert apply_overrides({"lora": 5}, ["lora.r=8"]) == {"lora": {"r": 8}}


def test_set_several_keys_that_only_make_sense_together() -> None:
    preset, _ = load_preset("smollm2-demo", ["dataset.val_size=0.05", "training.eval_steps=10"])
    assert (preset.dataset.val_size, preset.training.eval_steps) == (0.05, 10)


def test_set_method_qlora_implies_4bit() -> None:
    preset, _ = load_preset("smollm2-demo", ["method=qlora"])
    assert preset.model.load_in_4bit and preset.quantized


@pytest.mark.parametrize(
    ("item", "key", "suggestion"),
    [
        ("training.learning_rte=1e-4", "training.learning_rte", "learning_rate"),
        ("trainng.max_steps=5", "trainng", "training"),
        ("model.load_in_4bits=true", "model.load_in_4bits", "load_in_4bit"),
    ],
)
def test_set_of_an_unknown_key_suggests_the_close_one(item: str, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_preset("smollm2-demo", [item])
    expected = f"{key}: unknown key; did you mean '{suggestion}'?"
    assert any(problem.endswith(expected) for problem in info.value.problems), info.value.problems
    assert info.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("training.learning_rate=-1", "training.learning_rate: "),
        ("training.max_steps=many", "training.max_steps: "),
        ("method=dpo", "method: "),
        ("name=", "name: must be a plain name"),
        ("dataset.format=text", "plain text has no responses"),
        ("training.cuda_graphs=sometimes", "training.cuda_graphs: "),
    ],
)
def test_set_values_are_validated_like_the_file(item: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_preset("smollm2-demo", [item])
    assert any(fragment in problem for problem in info.value.problems), info.value.problems


@pytest.mark.parametrize("item", ["training.learning_rate", "=5", " =5", ""])
def test_a_set_without_key_and_value_is_refused(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_preset("smollm2-demo", [item])
    assert "KEY=VALUE" in info.value.message and info.value.hint


def test_a_set_problem_says_it_came_from_set() -> None:
    with pytest.raises(ConfigError) as info:
        load_preset("smollm2-demo", ["training.learning_rate=-1"])
    (problem,) = info.value.problems
    assert "--set" in problem


# Finding presets


def test_find_by_name() -> None:
    assert find_preset("smollm2-demo") == BUNDLED_DIR / "smollm2-demo.yaml"


def test_find_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = BUNDLED_DIR / "smollm2-demo.yaml"
    assert find_preset(str(bundled)) == bundled
    monkeypatch.chdir(REPO)
    assert find_preset("presets/smollm2-demo.yaml").resolve() == bundled
    other = tmp_path / "mine.yml"
    other.write_text("name: mine\n", encoding="utf-8")
    assert find_preset(str(other)) == other
    assert load_preset(str(other))[0].name == "mine"


def test_an_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ConfigError) as info:
        find_preset("smollm-demo")
    assert info.value.message == "No preset named 'smollm-demo'."
    assert info.value.hint and "smollm2-demo" in info.value.hint
    assert "smollm2-demo" in str(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_an_unknown_name_with_nothing_close_points_at_the_list() -> None:
    with pytest.raises(ConfigError) as info:
        find_preset("zzzzzzzz")
    assert info.value.hint and "finetty presets" in info.value.hint


@pytest.mark.parametrize("missing", ["nowhere/preset.yaml", "missing.yaml", "a/b"])
def test_a_missing_path_is_a_config_error(missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        find_preset(missing)
    assert info.value.message == f"Preset file not found: {missing}"


# User presets


def test_user_presets_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETTY_PRESETS", str(tmp_path / "mine"))
    assert user_presets_dir() == tmp_path / "mine"
    monkeypatch.delenv("FINETTY_PRESETS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert user_presets_dir() == tmp_path / "xdg" / "finetty" / "presets"


def test_a_user_preset_shadows_the_bundled_one(no_user_presets: Path) -> None:
    mine = no_user_presets / "smollm2-demo.yaml"
    mine.write_text(
        "name: smollm2-demo\ndescription: my demo\ntraining: {max_steps: 5}\n", encoding="utf-8"
    )
    by_name = {info.name: info for info in list_presets()}
    assert (by_name["smollm2-demo"].origin, by_name["smollm2-demo"].path) == ("user", mine)
    assert by_name["smollm2-demo"].description == "my demo"
    assert find_preset("smollm2-demo") == mine
    preset, path = load_preset("smollm2-demo")
    assert path == mine and preset.training.max_steps == 5
    assert len(by_name) == len(BUNDLED)


def test_user_presets_are_listed_after_the_bundled_ones(no_user_presets: Path) -> None:
    (no_user_presets / "aaa-mine.yaml").write_text("name: aaa-mine\n", encoding="utf-8")
    (no_user_presets / "broken.yaml").write_bytes((BAD / "not-utf8.yaml").read_bytes())
    (no_user_presets / "listy.yaml").write_bytes((BAD / "list.yaml").read_bytes())
    infos = list_presets()
    assert [info.name for info in infos[: len(BUNDLED)]] == BUNDLED_IDS
    tail = {info.name: info for info in infos[len(BUNDLED) :]}
    assert list(tail) == ["aaa-mine", "broken", "listy"]
    assert all(info.origin == "user" for info in tail.values())
    assert tail["broken"].description == "(unreadable)"
    assert tail["listy"].description == "(not a preset)"
    assert find_preset("aaa-mine") == no_user_presets / "aaa-mine.yaml"


def test_the_cpu_dpo_demo() -> None:
    # DPO from the embedded model on the built-in skills as pairs, offline, on the CPU; its
    # held-out pairs are the built-in set's own split (val_size 0).
    preset, _ = load_preset("smollm2-dpo-demo")
    assert preset.task == "dpo" and preset.method == "lora" and not preset.quantized
    assert preset.model.name_or_path == "embedded:smollm2-135m-instruct"
    assert (preset.dataset.path, preset.dataset.format) == ("builtin:finetty-skills", "auto")
    assert preset.dataset.val_size == 0 and preset.model.dtype == "float32"
    assert preset.preference.loss_types("dpo") == ("sigmoid",) and preset.preference.beta == 0.1


@pytest.mark.parametrize(("task", "kept"), [("sft", None), ("dpo", "preference")])
def test_to_yaml_leaves_out_the_sections_other_tasks_read(task: str, kept: str | None) -> None:
    """An SFT run's config.yaml listed GRPO's rewards and DPO's beta, which it never reads."""
    preset = Preset.model_construct(**{**validate({}).__dict__, "task": task})
    data = yaml.safe_load(to_yaml(preset))
    assert [s for s in ("grpo", "preference") if s in data] == ([kept] if kept else [])

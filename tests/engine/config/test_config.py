"""The preset schema: defaults, every kind of bad value, and what the errors say about it.

Bad presets live in tests/data/presets/; their line numbers are part of what is tested.
Fast: no model is loaded, no torch is imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config.presets import load_preset, validate
from engine.config.schema import (
    BUILTIN_DATASET,
    EMBEDDED_DEFAULT,
    DatasetSection,
    ExportSection,
    LoraSection,
    ModelSection,
    Preset,
    TrainingSection,
)
from engine.core.errors import EXIT_BAD_INPUT, ConfigError

REPO = Path(__file__).resolve().parents[3]
BAD = REPO / "tests" / "data" / "presets"


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(data, source="p.yaml")
    assert info.value.exit_code == EXIT_BAD_INPUT
    return info.value.problems


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_preset(str(path))
    return info.value


# Defaults


def test_an_empty_mapping_is_the_embedded_cpu_default() -> None:
    preset = validate({})
    assert preset.name == "run"
    assert preset.model.name_or_path == EMBEDDED_DEFAULT
    assert preset.dataset.path == BUILTIN_DATASET
    assert preset.method == "lora" and preset.uses_adapter and not preset.quantized
    assert preset.model.dtype == "auto"
    assert not preset.model.load_in_4bit and not preset.model.load_in_8bit
    assert preset.model.max_seq_length == 2048
    assert (preset.dataset.format, preset.dataset.train_on, preset.dataset.val_size) == (
        "auto",
        "responses",
        0.0,
    )
    assert (preset.lora.r, preset.lora.lora_alpha, preset.lora.target_modules) == (
        16,
        16,
        "all-linear",
    )
    assert preset.training.learning_rate == 2e-4
    assert preset.training.max_steps == -1 and preset.training.num_train_epochs == 1.0
    assert preset.training.eval_steps is None
    assert preset.export.formats == []


def test_a_partial_section_keeps_the_defaults_of_the_rest() -> None:
    preset = validate({"training": {"max_steps": 5}, "lora": {"r": 8}})
    assert preset.training.max_steps == 5
    assert preset.training.learning_rate == TrainingSection().learning_rate
    assert preset.lora.r == 8 and preset.lora.lora_alpha == LoraSection().lora_alpha
    assert preset.model == ModelSection() and preset.dataset == DatasetSection()


def test_default_lists_are_not_shared_between_presets() -> None:
    first = validate({})
    first.export.formats.append("adapter")
    assert validate({}).export.formats == []
    assert ExportSection().formats == []


# Unknown keys


@pytest.fixture(scope="module")
def unknown_keys_problems() -> list[str]:
    return load_error(BAD / "unknown-keys.yaml").problems


@pytest.mark.parametrize(
    ("line", "key", "suggestion"),
    [
        (3, "modle", "model"),
        (6, "model.load_in_4bits", "load_in_4bit"),
        (8, "dataset.formatt", "format"),
        (10, "lora.alpha", "lora_alpha"),
        (12, "training.learning_rte", "learning_rate"),
        (14, "export.format", "formats"),
    ],
)
def test_an_unknown_key_names_its_line_and_the_close_key(
    unknown_keys_problems: list[str], line: int, key: str, suggestion: str
) -> None:
    path = BAD / "unknown-keys.yaml"
    assert (
        f"{path}:{line} {key}: unknown key; did you mean '{suggestion}'?" in unknown_keys_problems
    )


def test_every_unknown_key_is_reported_at_once(unknown_keys_problems: list[str]) -> None:
    assert len(unknown_keys_problems) == 6


def test_the_message_lists_every_problem_and_the_hint_points_at_examples() -> None:
    error = load_error(BAD / "unknown-keys.yaml")
    assert error.message.startswith(f"{BAD / 'unknown-keys.yaml'}: 6 problems in the preset:")
    assert all(problem in error.message for problem in error.problems)
    assert error.hint and "finetty presets" in error.hint


def test_an_unknown_key_with_no_close_match_lists_the_valid_keys() -> None:
    (problem,) = problems_of({"lora": {"zzz": 1}})
    assert problem.startswith("p.yaml lora.zzz: unknown key; valid keys here: r, lora_alpha,")


def test_without_line_numbers_the_problem_still_names_source_and_key() -> None:
    assert problems_of({"training": {"lr": 1e-4}})[0].startswith("p.yaml training.lr: unknown key")


# Wrong types and out-of-range values


@pytest.fixture(scope="module")
def wrong_types_problems() -> list[str]:
    return load_error(BAD / "wrong-types.yaml").problems


@pytest.mark.parametrize(
    ("line", "key", "fragment"),
    [
        (4, "model.max_seq_length", "valid integer"),
        (5, "model.dtype", "'float64'"),
        (7, "dataset.packing", "valid boolean"),
        (8, "method", "'dpo'"),
        (10, "lora.r", "greater than or equal to 1"),
        (11, "lora.target_modules", "must not be empty"),
        (13, "training.learning_rate", "valid number"),
        (14, "training.per_device_train_batch_size", "at least 1, or auto"),
    ],
)
def test_a_wrong_value_names_its_line_key_and_what_was_given(
    wrong_types_problems: list[str], line: int, key: str, fragment: str
) -> None:
    prefix = f"{BAD / 'wrong-types.yaml'}:{line} {key}: "
    matching = [problem for problem in wrong_types_problems if problem.startswith(prefix)]
    assert len(matching) == 1, wrong_types_problems
    assert fragment in matching[0]


def test_every_wrong_value_is_reported_at_once(wrong_types_problems: list[str]) -> None:
    assert len(wrong_types_problems) == 8


@pytest.mark.parametrize(
    ("data", "prefix"),
    [
        ({"model": 5}, "p.yaml model: "),
        ({"model": ["name_or_path"]}, "p.yaml model: "),
        ({"lora": {"target_modules": 7}}, "p.yaml lora.target_modules: "),
        ({"lora": {"lora_dropout": 1.0}}, "p.yaml lora.lora_dropout: "),
        ({"model": {"name_or_path": "  "}}, "p.yaml model.name_or_path: must name a model"),
        ({"dataset": {"path": ""}}, "p.yaml dataset.path: must name a dataset"),
        ({"name": "../escape"}, "p.yaml name: must be a plain name"),
        ({"name": ".hidden"}, "p.yaml name: must be a plain name"),
        ({"training": {"learning_rate": 0}}, "p.yaml training.learning_rate: "),
        ({"training": {"max_steps": -2}}, "p.yaml training.max_steps: "),
        ({"training": {"per_device_train_batch_size": "big"}}, "p.yaml training."),
        ({"export": {"formats": ["gguf_q9"]}}, "p.yaml export.formats.0: "),
        ({"export": {"formats": "adapter"}}, "p.yaml export.formats: "),
    ],
)
def test_wrong_types_are_config_errors_with_the_dotted_key(data: dict, prefix: str) -> None:
    problems = problems_of(data)
    assert any(problem.startswith(prefix) for problem in problems), problems


def test_a_top_level_list_is_a_config_error() -> None:
    assert problems_of([1, 2])[0].startswith("p.yaml (top level): ")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"training": {"per_device_train_batch_size": "auto"}}, "auto"),
        ({"training": {"learning_rate": "1e-4"}}, 1e-4),  # YAML 1.1 reads 1e-4 as a string
        ({"dataset": {"val_size": 200}}, 200.0),  # a number of rows
        ({"lora": {"target_modules": ["q_proj", "v_proj"]}}, ["q_proj", "v_proj"]),
    ],
)
def test_values_that_look_odd_but_are_valid(data: dict, expected: object) -> None:
    preset = validate(data)
    section, values = next(iter(data.items()))
    key = next(iter(values))
    assert getattr(getattr(preset, section), key) == expected


# Impossible combinations


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (
            {"method": "qlora", "model": {"load_in_4bit": True, "load_in_8bit": True}},
            ("load_in_8bit", "choose one, not both"),
        ),
        ({"method": "full", "model": {"load_in_4bit": True}}, ("full cannot train quantized",)),
        ({"method": "full", "model": {"load_in_8bit": True}}, ("full cannot train quantized",)),
        ({"method": "lora", "model": {"load_in_4bit": True}}, ("set method: qlora",)),
        ({"training": {"bf16": True, "fp16": True}}, ("fp16", "choose one, not both")),
        (
            {"model": {"dtype": "float16"}, "training": {"bf16": True}},
            ("contradicts model.dtype: float16",),
        ),
        (
            {"model": {"dtype": "bf16"}, "training": {"fp16": True}},
            ("contradicts model.dtype: bfloat16",),
        ),
        ({"dataset": {"format": "text"}}, ("plain text has no responses",)),
        (
            {"dataset": {"format": "text", "train_on": "responses"}},
            ("plain text has no responses",),
        ),
        ({"training": {"eval_steps": 10}}, ("eval_steps", "needs a validation split")),
        ({"dataset": {"val_size": 2.5}}, ("val_size", "whole number of rows")),
    ],
)
def test_impossible_combinations_are_refused(data: dict, fragments: tuple[str, ...]) -> None:
    problems = problems_of(data)
    assert any(all(part in problem for part in fragments) for problem in problems), problems


@pytest.mark.parametrize(
    "data",
    [
        {"method": "qlora", "model": {"load_in_4bit": True}},
        {"method": "lora", "model": {"load_in_8bit": True}},
        {"dataset": {"format": "text", "train_on": "all"}},
        {"dataset": {"val_size": 0.05}, "training": {"eval_steps": 10}},
        {"dataset": {"val_size": 100}, "training": {"eval_steps": 10}},
        {"model": {"dtype": "auto"}, "training": {"bf16": True}},
        {"model": {"dtype": "bf16"}, "training": {"bf16": True, "fp16": False}},
    ],
)
def test_the_possible_neighbours_are_accepted(data: dict) -> None:
    validate(data)


def test_every_impossible_combination_in_a_file_is_reported() -> None:
    error = load_error(BAD / "impossible.yaml")
    text = "\n".join(error.problems)
    assert str(BAD / "impossible.yaml") in text
    assert "choose one, not both" in text
    assert "full cannot train quantized" in text


# qlora and dtype shorthands


@pytest.mark.parametrize(
    "data",
    [
        {"method": "qlora"},
        {"method": "qlora", "model": None},
        {"method": "qlora", "model": {"name_or_path": "Qwen/Qwen2.5-7B-Instruct"}},
    ],
)
def test_qlora_implies_load_in_4bit(data: dict) -> None:
    preset = validate(data)
    assert preset.model.load_in_4bit and not preset.model.load_in_8bit
    assert preset.quantized and preset.uses_adapter


def test_qlora_does_not_change_the_callers_data() -> None:
    data: dict[str, Any] = {"method": "qlora", "model": {"dtype": "bf16"}}
    validate(data)
    assert data == {"method": "qlora", "model": {"dtype": "bf16"}}


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("bf16", "bfloat16"),
        ("fp16", "float16"),
        ("half", "float16"),
        ("fp32", "float32"),
        ("bfloat16", "bfloat16"),
        ("auto", "auto"),
    ],
)
def test_dtype_aliases(given: str, resolved: str) -> None:
    assert validate({"model": {"dtype": given}}).model.dtype == resolved


# Files that are not presets at all


def test_malformed_yaml_names_the_file_and_line() -> None:
    error = load_error(BAD / "malformed.yaml")
    assert error.message.startswith(f"{BAD / 'malformed.yaml'}:5: not valid YAML")
    assert error.exit_code == EXIT_BAD_INPUT and error.hint


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("empty.yaml", "the preset is empty"),
        ("list.yaml", "must be a mapping of sections"),
        ("not-utf8.yaml", "not UTF-8"),
    ],
)
def test_files_that_are_not_presets_name_the_file(name: str, fragment: str) -> None:
    error = load_error(BAD / name)
    assert error.message.startswith(f"{BAD / name}: ")
    assert fragment in error.message
    assert error.exit_code == EXIT_BAD_INPUT and error.hint


@pytest.mark.parametrize(
    "text",
    ["just a string\n", "42\n", "name: a\n---\nname: b\n", "model: [unclosed\n", "\t- tab\n"],
)
def test_other_non_presets_are_config_errors_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text, encoding="utf-8")
    assert str(path) in load_error(path).message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    error = load_error(tmp_path / "nowhere.yaml")
    assert "nowhere.yaml" in error.message and error.exit_code == EXIT_BAD_INPUT


# Anything at all: only ConfigError comes out

# Infinities and huge integers have their own pinned tests below.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_infinity=False),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.dates(),  # YAML reads revision: 2024-01-01 as a date
    st.datetimes(),
    st.sampled_from(
        ["auto", "lora", "qlora", "full", "bf16", "fp16", "text", "all", "responses", "1e-4"]
    ),
)
_sections = (Preset, ModelSection, DatasetSection, LoraSection, TrainingSection, ExportSection)
_KEYS = sorted({key for model in _sections for key in model.model_fields})
_keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=8), st.integers(-3, 3), st.none())
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=20,
)
# Shaped like a preset, so that values reach the validators of every section.
_preset_like = st.fixed_dictionaries(
    {},
    optional={
        "name": _values,
        "method": _values,
        "model": st.dictionaries(st.sampled_from(list(ModelSection.model_fields)), _values),
        "dataset": st.dictionaries(st.sampled_from(list(DatasetSection.model_fields)), _values),
        "lora": st.dictionaries(st.sampled_from(list(LoraSection.model_fields)), _values),
        "training": st.dictionaries(st.sampled_from(list(TrainingSection.model_fields)), _values),
        "export": st.dictionaries(st.sampled_from(list(ExportSection.model_fields)), _values),
    },
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_values, _preset_like))
def test_validate_raises_nothing_but_config_error(data: Any) -> None:
    try:
        preset = validate(data, source="fuzz.yaml", lines={})
    except ConfigError as exc:
        assert exc.problems and all(problem.startswith("fuzz.yaml") for problem in exc.problems)
    else:
        assert isinstance(preset, Preset)


# Once-known crashes, pinned so they stay fixed.


def test_an_infinite_val_size_is_a_config_error() -> None:
    assert problems_of({"dataset": {"val_size": float("inf")}})


def test_a_huge_integer_is_a_config_error() -> None:
    assert problems_of({"lora": {"r": 10**5000}})


def test_a_huge_integer_literal_in_a_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("training:\n  seed: " + "9" * 5000 + "\n", encoding="utf-8")
    assert str(path) in load_error(path).message


@pytest.mark.parametrize(
    "data",
    [
        {"training": {"num_train_epochs": float("inf")}},
        {"lora": {"lora_alpha": float("inf")}},
        {"training": {"seed": -1}},  # numpy (transformers.set_seed) needs 0 <= seed < 2**32
        {"training": {"seed": 2**64}},
    ],
)
def test_numbers_no_run_can_use_are_refused(data: dict) -> None:
    problems_of(data)


@pytest.mark.parametrize(
    "model", [{"load_in_4bit": False}, {"load_in_8bit": True}, {"load_in_4bit": "false"}]
)
def test_qlora_without_a_4bit_base_is_refused(model: dict) -> None:
    assert any("qlora" in problem for problem in problems_of({"method": "qlora", "model": model}))


def test_combination_problems_name_their_keys_and_lines() -> None:
    error = load_error(BAD / "impossible.yaml")
    path = BAD / "impossible.yaml"
    assert len(error.problems) == 2
    assert error.problems[0].startswith(f"{path}:5 model.load_in_8bit: ")
    assert error.problems[1].startswith(f"{path}:6 method: ")


# Import hygiene


def test_the_config_modules_do_not_import_torch() -> None:
    code = (
        "import sys, engine.config.schema, engine.config.presets; "
        "print(sorted(m for m in ('torch', 'transformers', 'textual') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

"""The preference section and task: dpo|orpo|kto|simpo: TRL 1.16's names and defaults, which key
applies to which task, and TRL's own refusals, each named at its key in the preset file.

The defaults are checked against TRL's config classes themselves, so a TRL upgrade that moves
one shows up here. No model is loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config.preference import DPO_LOSS_TYPES, KTO_LOSS_TYPES, TASK_KEYS, PreferenceSection
from engine.config.presets import load_preset, to_yaml, validate
from engine.core.errors import EXIT_BAD_INPUT, ConfigError

TASKS = ("dpo", "orpo", "kto", "simpo")

# Every task: the sections are checked whether or not this build trains the task.
pytestmark = pytest.mark.usefixtures("every_task_trainable")


def problems_in(folder: Path, data: dict[str, Any]) -> list[str]:
    path = folder / "pref.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_preset(str(path))
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert all(problem.startswith(f"{path}:") for problem in info.value.problems)
    return info.value.problems


def trl_defaults(config: type) -> dict[str, Any]:
    return {
        field.name: field.default_factory() if callable(field.default_factory) else field.default
        for field in dataclasses.fields(config)
    }


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_every_task_trains_with_every_method(task: str, method: str) -> None:
    preset = validate({"task": task, "method": method})
    assert (preset.task, preset.method) == (task, method)


def test_dpo_defaults_and_loss_types_are_trls() -> None:
    from trl import DPOConfig

    trl = trl_defaults(DPOConfig)
    ours = validate({"task": "dpo"}).preference
    for key in ("beta", "label_smoothing", "use_weighting", "ld_alpha", "f_divergence_type"):
        assert getattr(ours, key) == trl[key], key
    assert (ours.f_alpha_divergence_coef, ours.discopop_tau) == (
        trl["f_alpha_divergence_coef"],
        trl["discopop_tau"],
    )
    assert ours.loss_types("dpo") == tuple(trl["loss_type"])
    # Every loss type TRL's help text lists, and no other.
    help_text = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type").metadata
    listed = help_text["help"].split("Possible values are:")[1].split(". If")[0]
    assert {name.strip(" `'") for name in listed.split(",")} == set(DPO_LOSS_TYPES)


def test_kto_orpo_and_simpo_defaults_are_trls() -> None:
    from trl import KTOConfig
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig

    kto, cpo, orpo = trl_defaults(KTOConfig), trl_defaults(CPOConfig), trl_defaults(ORPOConfig)
    ours = PreferenceSection()
    assert (ours.desirable_weight, ours.undesirable_weight) == (
        kto["desirable_weight"],
        kto["undesirable_weight"],
    )
    assert ours.loss_types("kto") == (kto["loss_type"],)
    assert set(KTO_LOSS_TYPES) == set(
        next(f for f in dataclasses.fields(KTOConfig) if f.name == "loss_type").metadata["choices"]
    )
    assert ours.beta == kto["beta"] == cpo["beta"] == orpo["beta"]
    assert (ours.simpo_gamma, ours.label_smoothing) == (cpo["simpo_gamma"], cpo["label_smoothing"])
    # SimPO proper has no NLL term; TRL's 1.0 is CPO's.
    assert ours.cpo_alpha == 0.0 and cpo["cpo_alpha"] == 1.0


@pytest.mark.parametrize("task", TASKS)
def test_method_named_like_a_task_says_where_it_goes(task: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate({"method": task}, source="p.yaml")
    assert f"task: {task}" in info.value.problems[0]
    assert "full, lora or qlora" in info.value.problems[0]


def test_a_string_loss_type_is_a_one_item_list_as_in_trl() -> None:
    preset = validate({"task": "dpo", "preference": {"loss_type": "ipo"}})
    assert preset.preference.loss_type == ["ipo"]
    assert preset.preference.loss_types("dpo") == ("ipo",)


@pytest.mark.parametrize(
    ("task", "preference", "fragment"),
    [
        ("orpo", {"loss_type": "ipo"}, "preference.loss_type: does not apply to task: orpo"),
        ("dpo", {"simpo_gamma": 1.0}, "preference.simpo_gamma: does not apply to task: dpo"),
        (
            "simpo",
            {"desirable_weight": 2.0},
            "preference.desirable_weight: does not apply to task: simpo",
        ),
        ("kto", {"use_weighting": True}, "preference.use_weighting: does not apply to task: kto"),
        ("kto", {"loss_type": "sigmoid"}, "preference.loss_type: sigmoid is not a kto loss type"),
        ("dpo", {"loss_type": "kto"}, "preference.loss_type: kto is not a dpo loss type"),
        ("kto", {"loss_type": ["kto", "apo_zero_unpaired"]}, "kto takes one loss type"),
        ("dpo", {"loss_type": []}, "preference.loss_type: must name at least one"),
        ("dpo", {"loss_type": ["ipo", "ipo"]}, "names a loss type twice"),
        ("dpo", {"loss_type": "cispo"}, "preference.loss_type.0: Input should be 'sigmoid'"),
        (
            "dpo",
            {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]},
            "preference.loss_weights: has 1 weights for 2 loss types",
        ),
        (
            "dpo",
            {"loss_type": "bco_pair", "f_divergence_type": "js_divergence"},
            "preference.f_divergence_type: js_divergence works only with",
        ),
        (
            "dpo",
            {"loss_type": "aot", "use_weighting": True},
            "preference.use_weighting: does not work",
        ),
        ("dpo", {"loss_type": "robust", "label_smoothing": 0.5}, "robust needs it below 0.5"),
        ("dpo", {"loss_type": "exo_pair"}, "exo_pair needs it above 0"),
        (
            "dpo",
            {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1e9]},
            "preference.loss_weights.1: Input should be less than or equal to 1000000",
        ),
        ("dpo", {"beta": 0}, "preference.beta: Input should be greater than 0"),
        ("dpo", {"ld_alpha": 1.5}, "preference.ld_alpha: Input should be less than or equal to 1"),
        ("dpo", {"beta": True}, "preference.beta: must be a number, not true or false"),
        (
            "dpo",
            {"rpo_alpha": 0.5},
            "pref.yaml:3 preference.rpo_alpha: TRL 1.16 writes RPO as loss_type: [sigmoid, sft] "
            "with loss_weights: [1.0, 0.5]",
        ),
        ("dpo", {"betas": 0.2}, "preference.betas: unknown key; did you mean 'beta'?"),
        (
            "kto",
            {"max_prompt_length": 4096},
            "preference.max_prompt_length: leaves no room for the other side",
        ),
    ],
)
def test_bad_values_name_file_line_key_and_task(
    tmp_path: Path, task: str, preference: dict, fragment: str
) -> None:
    problems = problems_in(tmp_path, {"task": task, "preference": preference})
    assert len(problems) == 1, problems
    assert fragment in problems[0]


def test_the_section_is_refused_outside_the_preference_tasks(tmp_path: Path) -> None:
    problems = problems_in(tmp_path, {"task": "sft", "preference": {"beta": 0.5}})
    assert (
        len(problems) == 1 and "preference: applies to task: dpo, orpo, kto or simpo" in problems[0]
    )


@pytest.mark.parametrize(
    ("dataset", "fragment"),
    [
        ({"packing": True}, "dataset.packing: dpo compares whole responses"),
        ({"format": "alpaca"}, "dataset.format: dpo reads preference data"),
        ({"train_on": "all"}, "dataset.train_on: dpo scores the responses only"),
    ],
)
def test_dataset_settings_that_preference_data_cannot_use(
    tmp_path: Path, dataset: dict, fragment: str
) -> None:
    problems = problems_in(tmp_path, {"task": "dpo", "dataset": dataset})
    assert len(problems) == 1 and fragment in problems[0]


def test_every_key_belongs_to_some_task() -> None:
    assert set().union(*TASK_KEYS.values()) == set(PreferenceSection.model_fields)


@pytest.mark.parametrize("task", TASKS)
def test_the_resolved_config_validates_again(task: str) -> None:
    # A run's config.yaml writes every key: the ones that do not apply must pass as defaults.
    preset = validate({"task": task})
    again = validate(yaml.safe_load(to_yaml(preset)))
    assert again.preference == preset.preference and again.task == task

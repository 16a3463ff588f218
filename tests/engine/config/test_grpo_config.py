"""The grpo section and task: grpo: TRL's names and defaults, ranges, rewards, reward files.

Presets are real YAML files in tmp_path, loaded as `finetty train` loads them, so every
problem is checked with the file and line it names. No torch is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config.presets import load_preset, to_yaml, validate
from engine.core.errors import EXIT_BAD_INPUT, ConfigError

REWARDS = "def correctness(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n"

# Every task: the sections are checked whether or not this build trains the task.
pytestmark = pytest.mark.usefixtures("every_task_trainable")


def write_preset(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "grpo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problems_in(folder: Path, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_preset(str(write_preset(folder, data)))
    assert info.value.exit_code == EXIT_BAD_INPUT
    return info.value.problems


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_grpo_trains_with_every_method(method: str) -> None:
    preset = validate({"task": "grpo", "method": method})
    assert preset.task == "grpo" and preset.method == method


def test_the_defaults_are_trls() -> None:
    # TRL 1.16 GRPOConfig: num_generations 8, max_completion_length 512, temperature 1.0,
    # top_p 1.0, beta 0.0, epsilon 0.2, epsilon_high None, loss_type dapo, scale_rewards group.
    grpo = validate({"task": "grpo"}).grpo
    assert (grpo.num_generations, grpo.max_completion_length, grpo.num_iterations) == (8, 512, 1)
    assert (grpo.temperature, grpo.top_p, grpo.beta, grpo.epsilon) == (1.0, 1.0, 0.0, 0.2)
    assert grpo.epsilon_high is None
    assert (grpo.loss_type, grpo.scale_rewards, grpo.on_reward_error) == ("dapo", "group", "stop")
    assert [(r.builtin, r.column, r.weight) for r in grpo.rewards] == [
        ("exact_match", "answer", 1.0)
    ]


@pytest.mark.parametrize(
    ("given", "meaning"), [(True, "group"), (False, "none"), ("batch", "batch")]
)
def test_scale_rewards_takes_trls_booleans(given: object, meaning: str) -> None:
    assert (
        validate({"task": "grpo", "grpo": {"scale_rewards": given}}).grpo.scale_rewards == meaning
    )


def test_method_grpo_says_where_grpo_is_set() -> None:
    with pytest.raises(ConfigError) as info:
        validate({"method": "grpo"}, source="p.yaml")
    assert "task: grpo" in info.value.problems[0] and "method: qlora" in info.value.problems[0]


@pytest.mark.parametrize(
    ("grpo", "fragment"),
    [
        (
            {"num_generations": 1},
            "grpo.num_generations: Input should be greater than or equal to 2",
        ),
        ({"temperature": 0}, "grpo.temperature: Input should be greater than 0"),
        ({"top_p": 1.5}, "grpo.top_p: Input should be less than or equal to 1"),
        ({"beta": -0.1}, "grpo.beta: Input should be greater than or equal to 0"),
        ({"epsilon": 1}, "grpo.epsilon: Input should be less than 1"),
        ({"num_iterations": 0}, "grpo.num_iterations: Input should be greater than or equal to 1"),
        ({"num_generations": True}, "grpo.num_generations: must be a number, not true or false"),
        (
            {"loss_type": "cispo"},
            "grpo.loss_type: Input should be 'grpo', 'dr_grpo', 'dapo' or 'bnpo'",
        ),
        (
            {"on_reward_error": "ignore"},
            "grpo.on_reward_error: Input should be 'skip_group' or 'stop'",
        ),
        ({"rewards": []}, "grpo.rewards: GRPO needs at least one reward"),
        (
            {"num_generation": 4},
            "grpo.num_generation: unknown key; did you mean 'num_generations'?",
        ),
        (
            {"max_completion_length": 4096},
            "grpo.max_completion_length: leaves no room for the prompt",
        ),
    ],
)
def test_bad_values_name_file_line_and_key(tmp_path: Path, grpo: dict, fragment: str) -> None:
    problems = problems_in(tmp_path, {"task": "grpo", "grpo": grpo})
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'grpo.yaml'}:")
    assert fragment in problems[0]


@pytest.mark.parametrize(
    ("reward", "fragment"),
    [
        ({"builtin": "regex"}, "rewards.0.pattern: builtin regex needs pattern"),
        (
            {"builtin": "regex", "pattern": "("},
            "rewards.0.pattern: is not a valid regular expression",
        ),
        (
            {"builtin": "exact_match", "max_tokens": 3},
            "rewards.0.max_tokens: does not apply to builtin exact_match",
        ),
        (
            {"builtin": "length_penalty", "max_tokens": 0},
            "rewards.0.max_tokens: Input should be greater than or equal to 1",
        ),
        (
            {"builtin": "nope"},
            "rewards.0.builtin: Input should be 'exact_match', 'numeric_match', 'regex' or 'length_penalty'",
        ),
        ({"weight": 2}, "rewards.0.file: a reward needs file: and function:, or builtin:"),
        ({"file": "my_rewards.py"}, "rewards.0.function: names the function in the reward file"),
        (
            {"file": "my_rewards.py", "function": "no such"},
            "rewards.0.function: must be the name of a Python function",
        ),
        (
            {"file": "my_rewards.py", "function": "f", "builtin": "regex"},
            "rewards.0.builtin: give builtin: or file:, not both",
        ),
        (
            {"file": "my_rewards.py", "function": "f", "column": "x"},
            "rewards.0.column: applies to built-in rewards only",
        ),
        (
            {"file": "missing.py", "function": "f"},
            "missing.py does not exist (reward files are named relative to the preset's folder)",
        ),
        ({"file": "notes.txt", "function": "f"}, "notes.txt is not a .py file"),
        ({"file": ".", "function": "f"}, "is a folder, not a regular file"),
        ({"builtin": "exact_match", "colum": "x"}, "rewards.0.colum: unknown key"),
    ],
)
def test_bad_rewards_are_refused_at_their_key(tmp_path: Path, reward: dict, fragment: str) -> None:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    (tmp_path / "notes.txt").write_text("not python")
    problems = problems_in(tmp_path, {"task": "grpo", "grpo": {"rewards": [reward]}})
    assert any(fragment in problem for problem in problems), problems


def test_a_named_pipe_is_refused_as_a_reward_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.py")
    (problem,) = problems_in(
        tmp_path, {"task": "grpo", "grpo": {"rewards": [{"file": "pipe.py", "function": "f"}]}}
    )
    assert "is a named pipe (FIFO), not a regular file" in problem


def test_a_reward_file_is_found_next_to_the_preset_and_saved_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    path = write_preset(
        tmp_path,
        {
            "task": "grpo",
            "grpo": {
                "rewards": [{"file": "my_rewards.py", "function": "correctness", "weight": 0.5}]
            },
        },
    )
    monkeypatch.chdir(tmp_path.parent)  # the preset's folder counts, not the current one
    preset, _ = load_preset(str(path))
    (reward,) = preset.grpo.rewards
    assert reward.file == str(tmp_path / "my_rewards.py") and reward.name == "correctness"
    # The resolved config.yaml is loadable again from anywhere, and means the same.
    again = validate(
        yaml.safe_load(to_yaml(preset)), source=str(tmp_path.parent / "elsewhere.yaml")
    )
    assert again == preset


def test_the_grpo_section_belongs_to_task_grpo() -> None:
    with pytest.raises(ConfigError) as info:
        validate({"grpo": {"num_generations": 4}}, source="p.yaml")
    assert info.value.problems == ["p.yaml grpo: applies to task: grpo only; set task: grpo"]
    # ...while an sft run's resolved config, which lists the grpo defaults, loads again.
    sft = validate({})
    assert validate(yaml.safe_load(to_yaml(sft))) == sft


@pytest.mark.parametrize(
    ("dataset", "key"),
    [({"packing": True}, "dataset.packing"), ({"format": "alpaca"}, "dataset.format")],
)
def test_sft_only_dataset_settings_are_refused_for_grpo(dataset: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate({"task": "grpo", "dataset": dataset}, source="p.yaml")
    assert info.value.problems[0].startswith(f"p.yaml {key}: ")

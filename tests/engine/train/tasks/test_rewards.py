"""GRPO's rewards: the built-ins, loading the user's file, and every way a reward can fail.

Reward files are real files written in tmp_path and loaded the way a run loads them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from engine.config.grpo import RewardSpec
from engine.core.errors import EXIT_FAILED, ConfigError
from engine.train.tasks.rewards import (
    RewardError,
    final_number,
    load_rewards,
    score_completions,
)


def score(specs: list[RewardSpec], completions: list[Any], on_error: str = "stop", **columns: Any):
    count = len(completions)
    return score_completions(
        load_rewards(specs),
        prompts=["p"] * count,
        completions=completions,
        completion_ids=[list(range(len(str(c)))) for c in completions],
        columns=columns,
        rows=[10 + i // 2 for i in range(count)],  # two completions per dataset row
        num_generations=2,
        on_error=on_error,  # type: ignore[arg-type]
    )


def values(scores: Any, column: int = 0) -> list[float | None]:
    return [None if math.isnan(v) else v for v in scores.per_function[:, column].tolist()]


def reward_file(tmp_path: Path, body: str, name: str = "my_rewards.py") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


# Built-ins


def test_exact_match_compares_with_the_column_as_the_skills_evaluation_does() -> None:
    spec = RewardSpec(builtin="exact_match", column="answer")
    completions = ["RED CAT", " red cat", "RED CAT.", [{"role": "assistant", "content": "RED CAT"}]]
    scores = score([spec], completions, answer=["RED CAT"] * 4)
    assert values(scores) == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("so the total is 18.\n#### 18", 18.0),
        ("#### 1,234", 1234.0),
        ("first 3 then 4, answer 42", 42.0),
        ("it costs -7.5 dollars", -7.5),
        ("no number here", None),
        ("#### 5 but later 6", 5.0),
    ],
)
def test_final_number_reads_gsm8k_answers(text: str, number: float | None) -> None:
    assert final_number(text) == number


def test_numeric_match_compares_final_numbers() -> None:
    spec = RewardSpec(builtin="numeric_match")
    completions = ["The answer is 1,234.", "#### 1234", "12", "none"]
    scores = score([spec], completions, answer=["#### 1234", 1234, "12.0", "3"])
    assert values(scores) == [1.0, 1.0, 1.0, 0.0]


def test_regex_and_length_penalty() -> None:
    specs = [
        RewardSpec(builtin="regex", pattern=r"^<think>.*</think>"),
        RewardSpec(builtin="length_penalty", max_tokens=4),
    ]
    scores = score(specs, ["<think>x</think>", "abcdef", "abcdefgh", "abcdefghijkl"])
    assert values(scores, 0) == [1.0, 0.0, 0.0, 0.0]
    assert values(scores, 1) == [-1.0, -0.5, -1.0, -1.0]  # 16, 6, 8, 12 tokens against 4


def test_two_rewards_of_one_kind_get_distinct_names() -> None:
    specs = [RewardSpec(builtin="exact_match"), RewardSpec(builtin="exact_match", column="alt")]
    assert [reward.name for reward in load_rewards(specs)] == ["exact_match", "exact_match_2"]


# The user's own file


def test_a_file_reward_gets_trls_arguments_and_its_none_becomes_nan(tmp_path: Path) -> None:
    path = reward_file(
        tmp_path,
        "def correctness(prompts, completions, completion_ids, answer, trainer_state, **kwargs):\n"
        "    assert trainer_state.global_step == 0\n"
        "    return [None if a is None else float(c == a) for c, a in zip(completions, answer)]\n",
    )
    spec = RewardSpec(file=path, function="correctness", weight=2.0)
    scores = score([spec], ["4", "5", "x", "y"], answer=["4", "4", None, None])
    assert values(scores) == [1.0, 0.0, None, None]
    assert load_rewards([spec])[0].weight == 2.0


def test_the_file_is_loaded_from_its_path_even_with_a_module_name(tmp_path: Path) -> None:
    # A file called json.py must be that file, never the standard library's json.
    path = reward_file(
        tmp_path,
        "def loads(prompts, completions, **kw):\n    return [7.0] * len(completions)\n",
        "json.py",
    )
    scores = score([RewardSpec(file=path, function="loads")], ["a", "b"])
    assert values(scores) == [7.0, 7.0]


@pytest.mark.parametrize(
    ("body", "function", "fragments"),
    [
        (
            "def other(p, c, **k):\n    return []\n",
            "correctness",
            ("no function 'correctness'", "other"),
        ),
        ("def correctness(:\n", "correctness", ("my_rewards.py:1", "not valid Python")),
        ("raise RuntimeError('needs a GPU')\n", "correctness", ("RuntimeError", "needs a GPU")),
        ("correctness = 3\n", "correctness", ("is a int, not a function",)),
    ],
)
def test_a_file_that_cannot_give_the_function_is_a_config_error(
    tmp_path: Path, body: str, function: str, fragments: tuple[str, ...]
) -> None:
    spec = RewardSpec(file=reward_file(tmp_path, body), function=function)
    with pytest.raises(ConfigError) as info:
        load_rewards([spec])
    for fragment in fragments:
        assert fragment in str(info.value)


# Failures while scoring

_FAILS_ON_BAD = (
    "def picky(prompts, completions, **kwargs):\n"
    "    return [1 / 0 if c == 'bad' else 1.0 for c in completions]\n"
)


def test_a_raising_reward_stops_the_run_naming_function_file_and_row(tmp_path: Path) -> None:
    spec = RewardSpec(file=reward_file(tmp_path, _FAILS_ON_BAD), function="picky")
    with pytest.raises(RewardError) as info:
        score([spec], ["ok", "ok", "ok", "bad"])
    message = str(info.value)
    for fragment in (
        "'picky'",
        "my_rewards.py",
        "ZeroDivisionError",
        "dataset row 11",
        "completion 4",
    ):
        assert fragment in message
    assert info.value.exit_code == EXIT_FAILED and "on_reward_error" in (info.value.hint or "")


def test_skip_group_leaves_out_only_the_failing_group(tmp_path: Path) -> None:
    specs = [
        RewardSpec(file=reward_file(tmp_path, _FAILS_ON_BAD), function="picky"),
        RewardSpec(builtin="length_penalty", max_tokens=100),
    ]
    scores = score(specs, ["ok", "ok", "ok", "bad", "ok", "ok"], on_error="skip_group")
    assert scores.skipped_groups == [1]
    assert values(scores, 0) == [1.0, 1.0, None, None, 1.0, 1.0]
    assert values(scores, 1)[2:4] == [None, None]  # the whole group, every reward
    assert len(scores.problems) == 1 and "dataset row 11" in scores.problems[0]


@pytest.mark.parametrize(
    ("returned", "fragment"),
    [
        ("['1.0'] * len(completions)", "returned str '1.0' for dataset row 10"),
        ("[float('nan')] * len(completions)", "returned nan for dataset row 10"),
        ("[1.0]", "returned 1 rewards for 2 completions"),
        ("3.0", "returned float, not a list of numbers"),
    ],
)
def test_a_bad_return_is_named_clearly(tmp_path: Path, returned: str, fragment: str) -> None:
    body = f"def f(prompts, completions, **kwargs):\n    return {returned}\n"
    spec = RewardSpec(file=reward_file(tmp_path, body), function="f")
    with pytest.raises(RewardError, match=re.escape("'f' (my_rewards.py)")) as info:
        score([spec], ["a", "b", "c", "d"])
    assert fragment in str(info.value)


def test_a_missing_column_names_the_columns_there_are() -> None:
    with pytest.raises(RewardError) as info:
        score([RewardSpec(builtin="exact_match", column="solution")], ["a", "b"], answer=["a", "b"])
    assert "no column 'solution'" in str(info.value) and "answer" in str(info.value)


def test_rewards_can_log_metrics_and_columns_as_in_trl(tmp_path: Path) -> None:
    body = (
        "def f(prompts, completions, log_metric, log_extra, **kwargs):\n"
        "    log_metric('format_ok', 0.5)\n"
        "    log_extra('why', ['short'] * len(completions))\n"
        "    return [1.0] * len(completions)\n"
    )
    scores = score([RewardSpec(file=reward_file(tmp_path, body), function="f")], ["a", "b"])
    assert scores.metrics == {"format_ok": [0.5]}
    assert scores.extra_columns == {"why": ["short", "short"]}

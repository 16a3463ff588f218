"""GRPO's rewards: the built-in ones, the user's own loaded from the file the preset names, and
scoring a batch of completions with all of them.

Every reward has TRL 1.16's reward-function signature, ``f(prompts, completions, **kwargs) ->
list[float | None]``, and is called as GRPOTrainer._calculate_rewards calls it: keyword
arguments ``prompts``, ``completions``, ``completion_ids``, one list per other dataset column,
``trainer_state``, ``log_extra`` and ``log_metric``. ``None`` means "no reward for this row" and
becomes NaN, which the weighted total skips (TRL's nansum). A reward that raises, or returns
something that is not one number (or None) per completion, is reported with its name, file and
dataset row; then its prompt's group is skipped or the run stops, as ``on_reward_error`` says.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import numbers
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from engine.config.grpo import RewardSpec
from engine.core.errors import ConfigError, TrainingError
from engine.data.builtin_data import is_correct

RewardFunction = Callable[..., Sequence[Any]]
OnRewardError = Literal["skip_group", "stop"]
Prompt = str | list[dict[str, str]]
Completion = str | list[dict[str, str]]

# GSM8K writes the final answer after "####"; otherwise the last number in the text counts.
_FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


class RewardError(TrainingError):
    """A reward function raised, or returned something that is not a reward per completion."""

    kind = "reward"
    default_title = "Reward function failed"


@dataclass(frozen=True)
class Reward:
    """A reward ready to call: its name (for panels and metrics), weight and origin."""

    name: str
    function: RewardFunction
    weight: float
    origin: str
    """The file it was loaded from, or "built-in"."""


@dataclass(frozen=True)
class TrainerState:
    """What TRL hands rewards as ``trainer_state`` (a transformers TrainerState), reduced to the
    fields rewards read to shape themselves by progress."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0


@dataclass
class RewardScores:
    """Rewards of one batch: ``per_function`` is [completions, rewards] with NaN for None (TRL's
    ``rewards_per_func``); ``skipped_groups`` lists the prompt groups a failure left out."""

    per_function: torch.Tensor
    skipped_groups: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    extra_columns: dict[str, list[Any]] = field(default_factory=dict)


def load_rewards(specs: Sequence[RewardSpec]) -> list[Reward]:
    """The preset's rewards, callable; names made unique so their metrics never collide."""
    rewards: list[Reward] = []
    seen: dict[str, int] = {}
    for spec in specs:
        function, origin = (
            (_load_file_function(Path(spec.file), spec.function or ""), spec.file)
            if spec.file is not None
            else (builtin_reward(spec), "built-in")
        )
        seen[spec.name] = seen.get(spec.name, 0) + 1
        name = spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}"
        rewards.append(Reward(name=name, function=function, weight=spec.weight, origin=origin))
    return rewards


def builtin_reward(spec: RewardSpec) -> RewardFunction:
    """The function behind a ``builtin:`` reward, with the spec's parameters bound."""
    if spec.builtin == "exact_match":
        return _column_reward(spec.column or "", _exact_match, "exact_match")
    if spec.builtin == "numeric_match":
        return _column_reward(spec.column or "", _numeric_match, "numeric_match")
    if spec.builtin == "regex":
        return _regex_reward(re.compile(spec.pattern or ""))
    if spec.builtin == "length_penalty":
        return _length_penalty(spec.max_tokens or 1)
    raise ConfigError(f"Unknown built-in reward {spec.builtin!r}.")  # the schema refuses it first


def score_completions(
    rewards: Sequence[Reward],
    *,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    completion_ids: Sequence[Sequence[int]],
    columns: dict[str, Sequence[Any]],
    rows: Sequence[int],
    num_generations: int,
    on_error: OnRewardError,
    trainer_state: TrainerState | None = None,
) -> RewardScores:
    """Score every completion with every reward (completions grouped by prompt, as TRL lays
    them out: ``num_generations`` in a row share a prompt). ``rows`` holds each completion's
    dataset row, for messages."""
    count = len(completions)
    if count % num_generations:
        raise ValueError(f"{count} completions do not split into groups of {num_generations}")
    scores = RewardScores(per_function=torch.full((count, len(rewards)), math.nan))

    def log_extra(column: str, values: list[Any]) -> None:
        scores.extra_columns.setdefault(column, []).extend(values)

    def log_metric(name: str, value: float) -> None:
        scores.metrics.setdefault(name, []).append(float(value))

    kwargs: dict[str, Any] = {name: list(values) for name, values in columns.items()}
    kwargs.update(
        trainer_state=trainer_state or TrainerState(), log_extra=log_extra, log_metric=log_metric
    )
    batch = _Batch(list(prompts), list(completions), [list(ids) for ids in completion_ids], kwargs)
    failed: set[int] = set()
    for index, reward in enumerate(rewards):
        values, failures = _call(reward, batch, rows, num_generations)
        if failures and on_error == "stop":
            raise RewardError(failures[0][1], hint=_HINT)
        for group, problem in failures:
            failed.add(group)
            scores.problems.append(problem)
        scores.per_function[:, index] = torch.tensor(values, dtype=torch.float32)
    for group in sorted(failed):
        scores.per_function[group * num_generations : (group + 1) * num_generations] = math.nan
    scores.skipped_groups = sorted(failed)
    return scores


_HINT = (
    "Fix the reward function (it gets prompts, completions and completion_ids, plus one list "
    "per dataset column, and returns one float or None per completion), or set "
    "grpo.on_reward_error: skip_group to leave such groups out of the step."
)


@dataclass(frozen=True)
class _Batch:
    prompts: list[Prompt]
    completions: list[Completion]
    completion_ids: list[list[int]]
    kwargs: dict[str, Any]

    def part(self, start: int, stop: int) -> _Batch:
        """Rows start..stop, every per-row list cut the same way."""
        rows = len(self.completions)
        kwargs = {
            key: value[start:stop] if isinstance(value, list) and len(value) == rows else value
            for key, value in self.kwargs.items()
        }
        return _Batch(
            self.prompts[start:stop],
            self.completions[start:stop],
            self.completion_ids[start:stop],
            kwargs,
        )

    def call(self, function: RewardFunction) -> Sequence[Any]:
        return function(
            prompts=self.prompts,
            completions=self.completions,
            completion_ids=self.completion_ids,
            **self.kwargs,
        )


def _call(
    reward: Reward, batch: _Batch, rows: Sequence[int], num_generations: int
) -> tuple[list[float], list[tuple[int, str]]]:
    """One reward over the batch: its values (NaN for None) and (group, problem) failures.

    The batch is scored in one call, as TRL does. Only when that fails is it scored again group
    by group, so that the groups that fail can be skipped and the row named."""
    count = len(batch.completions)
    try:
        return _checked(reward, batch.call(reward.function), 0, count, rows), []
    except Exception:  # noqa: BLE001 - user code: any failure is reported, group by group below
        pass
    values = [math.nan] * count
    failures: list[tuple[int, str]] = []
    for group in range(count // num_generations):
        start = group * num_generations
        part = batch.part(start, start + num_generations)
        try:
            values[start : start + num_generations] = _checked(
                reward, part.call(reward.function), start, num_generations, rows
            )
        except _BadReturn as problem:
            failures.append((group, str(problem)))
        except Exception as exc:  # noqa: BLE001 - user code: reported, never a traceback
            failures.append((group, _raised(reward, exc, _failing_row(reward, part, start), rows)))
    return values, failures


class _BadReturn(Exception):
    """A reward returned something other than one number (or None) per completion."""


def _checked(
    reward: Reward, output: Any, start: int, count: int, rows: Sequence[int]
) -> list[float]:
    """``output`` as ``count`` floats (NaN for None), for completions start..start+count."""
    where = _where(reward)
    if isinstance(output, str | bytes | dict) or not isinstance(output, Sequence | torch.Tensor):
        raise _BadReturn(f"Reward {where} returned {type(output).__name__}, not a list of numbers.")
    values = list(output)
    if len(values) != count:
        raise _BadReturn(
            f"Reward {where} returned {len(values)} rewards for {count} completions (dataset "
            f"row {rows[start]} onwards); return one per completion."
        )
    out: list[float] = []
    for offset, value in enumerate(values):
        index = start + offset
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if value is None:
            out.append(math.nan)
        elif not isinstance(value, numbers.Real):
            raise _BadReturn(
                f"Reward {where} returned {type(value).__name__} {_short(value)} for dataset "
                f"row {rows[index]} (completion {index + 1}); rewards must be numbers or None."
            )
        elif not math.isfinite(float(value)):
            raise _BadReturn(
                f"Reward {where} returned {float(value)} for dataset row {rows[index]} "
                f"(completion {index + 1}); return None for a completion it cannot score."
            )
        else:
            out.append(float(value))
    return out


def _failing_row(reward: Reward, part: _Batch, start: int) -> int:
    """The first completion of a failing group that fails alone (the group's first if none)."""
    for offset in range(len(part.completions)):
        try:
            part.part(offset, offset + 1).call(reward.function)
        except Exception:  # noqa: BLE001 - user code: this probe only looks for the row
            return start + offset
    return start


def _raised(reward: Reward, exc: Exception, index: int, rows: Sequence[int]) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"Reward {_where(reward)} raised {type(exc).__name__}{': ' + text if text else ''} "
        f"on dataset row {rows[index]} (completion {index + 1})."
    )


def _where(reward: Reward) -> str:
    origin = "built-in" if reward.origin == "built-in" else Path(reward.origin).name
    return f"'{reward.name}' ({origin})"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Loading the user's file


def _load_file_function(path: Path, name: str) -> RewardFunction:
    """``name`` from the Python file at ``path``, imported from that path and nowhere else."""
    # A module name of our own, from the path: never one that `import` could find elsewhere.
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"finetty_rewards_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python file.", hint=_LOAD_HINT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise ConfigError(
            f"{path.name}:{exc.lineno}: not valid Python ({exc.msg}).", hint=_LOAD_HINT
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module code: reported, not a traceback
        sys.modules.pop(module_name, None)
        raise ConfigError(
            f"{path}: running the file raised {type(exc).__name__}: {exc}.", hint=_LOAD_HINT
        ) from None
    function = getattr(module, name, None)
    if function is None:
        defined = sorted(
            key
            for key, value in vars(module).items()
            if callable(value) and not key.startswith("_")
        )
        listed = ", ".join(defined) or "none"
        raise ConfigError(
            f"{path.name} defines no function '{name}' (its functions: {listed}).",
            hint="Set grpo.rewards[].function to one of them.",
        )
    if not callable(function):
        raise ConfigError(
            f"{path.name}: '{name}' is a {type(function).__name__}, not a function.",
            hint=_LOAD_HINT,
        )
    return function


_LOAD_HINT = (
    "A reward file defines functions such as "
    "`def correctness(prompts, completions, **kwargs) -> list[float | None]`."
)


# Built-in rewards


def completion_text(completion: Completion) -> str:
    """A completion as text: TRL's conversational completions are [{role, content}] lists."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)


def final_number(text: str) -> float | None:
    """The answer a GSM8K-style text gives: the number after "####", else the last number;
    thousands commas ignored ("1,234" is 1234). None when there is no number."""
    found = _FINAL_ANSWER.search(text)
    if found is None:
        numbers_found = _NUMBER.findall(text)
        if not numbers_found:
            return None
        token = numbers_found[-1]
    else:
        token = found.group(1)
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def _exact_match(completion: str, answer: Any) -> float:
    return 1.0 if is_correct(str(answer), completion) else 0.0


def _numeric_match(completion: str, answer: Any) -> float:
    expected = float(answer) if isinstance(answer, numbers.Real) else final_number(str(answer))
    got = final_number(completion)
    return 1.0 if expected is not None and got is not None and got == expected else 0.0


def _column_reward(column: str, compare: Callable[[str, Any], float], name: str) -> RewardFunction:
    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        if column not in kwargs:
            known = ", ".join(
                key
                for key in kwargs
                if key not in ("completion_ids", "trainer_state", "log_extra", "log_metric")
            )
            raise ValueError(
                f"the dataset has no column '{column}' (its columns: {known or 'none'})"
            )
        return [
            None if answer is None else compare(completion_text(completion), answer)
            for completion, answer in zip(completions, kwargs[column], strict=True)
        ]

    reward.__name__ = name
    return reward


def _regex_reward(pattern: re.Pattern[str]) -> RewardFunction:
    def regex(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        return [1.0 if pattern.search(completion_text(c)) else 0.0 for c in completions]

    return regex


def _length_penalty(max_tokens: int) -> RewardFunction:
    def length_penalty(
        prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **kwargs: Any
    ) -> list[float | None]:
        # 0 within the budget, then linearly to -1 at twice the budget (and no lower).
        return [-min(1.0, max(0, len(ids) - max_tokens) / max_tokens) for ids in completion_ids]

    return length_penalty

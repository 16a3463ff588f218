"""The ``grpo:`` section: GRPO's knobs under TRL GRPOConfig's names, and the rewards it trains on.

Defaults are TRL 1.16's, so a value pasted from a TRL recipe means the same here. A reward is
either one of ours (``builtin:``) or a function in a Python file the preset names (``file:``):
that file is code and runs with the user's rights, so it is only ever loaded from the path
written in the preset, resolved against the preset's folder and checked to be a regular file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from engine.config.section import Section
from engine.core.input_files import regular_file_problem

MAX_GENERATIONS = 1024
MAX_COMPLETION_LENGTH = 1_048_576
MAX_ITERATIONS = 1000
MAX_REWARD_WEIGHT = 1e6
# presets.validate passes the preset file's folder under this key of the validation context.
PRESET_DIR = "preset_dir"

Builtin = Literal["exact_match", "numeric_match", "regex", "length_penalty"]
# The parameters each built-in takes: one table, read by validation and by the docs below.
BUILTIN_PARAMETERS: dict[str, tuple[str, ...]] = {
    "exact_match": ("column",),
    "numeric_match": ("column",),
    "regex": ("pattern",),
    "length_penalty": ("max_tokens",),
}
_REQUIRED = {"regex": "pattern", "length_penalty": "max_tokens"}
_ANSWER_COLUMN = "answer"
_BUILTIN_HINT = ", ".join(
    f"{name} ({', '.join(params)})" for name, params in BUILTIN_PARAMETERS.items()
)


class RewardSpec(Section):
    """One reward: ``{file: F, function: NAME}`` or ``{builtin: NAME, ...its parameters}``."""

    file: str | None = None
    """Python file that defines the function, relative to the preset. It runs as code."""
    function: str | None = None
    """Name of the function in ``file``, with TRL's signature:
    ``def f(prompts, completions, **kwargs) -> list[float | None]``."""
    builtin: Builtin | None = None
    """A built-in reward: exact_match (1.0 when the completion equals ``column``),
    numeric_match (GSM8K style: the final number, after "####" when present, equals the one in
    ``column``), regex (1.0 when ``pattern`` is found), length_penalty (0 up to ``max_tokens``
    completion tokens, falling linearly to -1 at twice that)."""
    column: str | None = None
    """exact_match, numeric_match: the dataset column holding the right answer (default answer)."""
    pattern: str | None = None
    """regex: a Python regular expression searched for in each completion."""
    max_tokens: int | None = Field(None, ge=1, le=MAX_COMPLETION_LENGTH)
    """length_penalty: completion tokens allowed before the penalty starts."""
    weight: float = Field(1.0, ge=-MAX_REWARD_WEIGHT, le=MAX_REWARD_WEIGHT)
    """Weight of this reward in the total (TRL's reward_weights)."""

    @model_validator(mode="before")
    @classmethod
    def _answer_column_by_default(cls, data: Any) -> Any:
        # Filled in here, not at use, so the resolved config.yaml says which column was read.
        if isinstance(data, dict) and data.get("builtin") in ("exact_match", "numeric_match"):
            return {"column": _ANSWER_COLUMN, **data}
        return data

    @field_validator("file")
    @classmethod
    def _reward_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must name a Python file, such as my_rewards.py")
        path = Path(value).expanduser()
        base = (info.context or {}).get(PRESET_DIR)
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        path = path.resolve()
        problem = regular_file_problem(path)
        if problem:
            raise ValueError(f"{problem}; name the Python file that defines the reward")
        if not path.is_file():
            raise ValueError(
                f"{path} does not exist (reward files are named relative to the preset's folder)"
            )
        if path.suffix != ".py":
            raise ValueError(f"{path} is not a .py file; rewards are loaded from Python files")
        # Absolute, so the run's resolved config.yaml loads the same file from anywhere.
        return str(path)

    @field_validator("function")
    @classmethod
    def _function_name(cls, value: str | None) -> str | None:
        if value is not None and not value.isidentifier():
            raise ValueError("must be the name of a Python function, such as correctness")
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> RewardSpec:
        problems: list[tuple[str, str]] = []
        # A resolved config.yaml writes every key, the unused ones as null: those are not given.
        given = {key for key in self.model_fields_set if getattr(self, key) is not None}
        if self.builtin is None and self.file is None:
            problems.append(
                ("file", f"a reward needs file: and function:, or builtin: one of {_BUILTIN_HINT}")
            )
        elif self.builtin is not None and self.file is not None:
            problems.append(("builtin", "give builtin: or file:, not both"))
        elif self.file is not None:
            if self.function is None:
                problems.append(("function", "names the function in the reward file; required"))
            problems += [
                (key, f"applies to built-in rewards only, not to file: {Path(self.file).name}")
                for key in ("column", "pattern", "max_tokens")
                if key in given
            ]
        else:
            takes = BUILTIN_PARAMETERS[self.builtin or ""]
            if "function" in given:
                problems.append(("function", "applies to file: rewards only"))
            problems += [
                (key, f"does not apply to builtin {self.builtin} (it takes: {', '.join(takes)})")
                for key in ("column", "pattern", "max_tokens")
                if key in given and key not in takes
            ]
            required = _REQUIRED.get(self.builtin or "")
            if required and getattr(self, required) is None:
                problems.append((required, f"builtin {self.builtin} needs {required}"))
        if problems:
            raise _combination_error("RewardSpec", problems)
        return self

    @property
    def name(self) -> str:
        """How panels and messages call this reward: the function's name or the built-in's."""
        return self.function or self.builtin or "reward"


class GrpoSection(Section):
    num_generations: int = Field(8, ge=2, le=MAX_GENERATIONS)
    """Completions sampled per prompt: the group whose rewards set each one's advantage."""
    max_completion_length: int = Field(512, ge=1, le=MAX_COMPLETION_LENGTH)
    """Longest completion, in tokens; longer ones are cut (and counted as clipped)."""
    temperature: float = Field(1.0, gt=0, le=100)
    """Sampling temperature: higher samples more varied completions."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    beta: float = Field(0.0, ge=0, le=1e6)
    """KL coefficient against the reference (the base with the adapter off); 0 skips the
    reference pass entirely."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """Clipping range of the probability ratio, below 1 (and above, unless epsilon_high)."""
    epsilon_high: float | None = Field(None, gt=0, le=1e3)
    """Upper clipping range (DAPO's clip-higher, 0.28 in the paper); unset: epsilon."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    """How token losses are averaged: grpo (per completion, then over completions), bnpo (over
    the micro-batch's tokens), dr_grpo (divided by max_completion_length), dapo (over the
    optimizer step's tokens; TRL's default)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the reward spread of each group, of the whole batch, or not at all
    (Dr. GRPO); true means group and false none, as in TRL."""
    num_iterations: int = Field(1, ge=1, le=MAX_ITERATIONS)
    """Optimisation passes over each batch of generated completions (μ in the GRPO paper)."""
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(builtin="exact_match", column=_ANSWER_COLUMN)]
    )
    """Rewards summed with their weights: {file: my_rewards.py, function: correctness,
    weight: 1.0} or {builtin: exact_match, column: answer}."""
    on_reward_error: Literal["skip_group", "stop"] = "stop"
    """When a reward function raises or returns a bad value: stop the run, or leave that
    prompt's group of completions out of the step and go on."""

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _scale_rewards_bool(cls, value: object) -> object:
        # TRL's GRPOConfig maps True/False the same way (grpo_config.py __post_init__).
        return (
            {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value
        )

    @field_validator("rewards")
    @classmethod
    def _some_reward(cls, value: list[RewardSpec]) -> list[RewardSpec]:
        if not value:
            raise ValueError("GRPO needs at least one reward, e.g. [{builtin: exact_match}]")
        return value


def _combination_error(title: str, problems: list[tuple[str, str]]) -> ValidationError:
    """One validation error per problem, each at its key, so each gets its YAML line."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("combination", message), loc=(key,), input=None
            )
            for key, message in problems
        ],
    )

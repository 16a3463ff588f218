"""The ``preference:`` section: DPO, ORPO, KTO and SimPO's knobs under TRL 1.16's names.

Defaults are TRL 1.16's (DPOConfig, KTOConfig, ORPOConfig, CPOConfig), so a value pasted from
a TRL recipe means the same here. One section serves the four tasks: which keys apply to which
task is the table TASK_KEYS, and the preset refuses a key set for a task that does not read it
(schema.py's _preference_problems), naming the key and the task.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from engine.config.section import Section

PreferenceTask = Literal["dpo", "orpo", "kto", "simpo"]
PREFERENCE_TASKS: tuple[str, ...] = get_args(PreferenceTask)

# TRL 1.16 DPOConfig.loss_type's values, in the order of its help text.
DpoLossType = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]
KtoLossType = Literal["kto", "apo_zero_unpaired"]
DPO_LOSS_TYPES: tuple[str, ...] = get_args(DpoLossType)
KTO_LOSS_TYPES: tuple[str, ...] = get_args(KtoLossType)
# One flat Literal (nested ones flatten), so a misspelt name gets one error listing all.
LossType = Literal[DpoLossType, KtoLossType]
# The loss types whose f-divergence generalisation exists (TRL 1.16 DPOTrainer.__init__).
F_DIVERGENCE_LOSS_TYPES = frozenset(
    {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
)
FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]

MAX_BETA = 1e6
MAX_LENGTH = 1_048_576
MAX_WEIGHT = 1e6

_LIMITS = ("beta", "max_prompt_length", "max_completion_length")
# Which task reads which key; every key of PreferenceSection appears at least once.
TASK_KEYS: dict[str, frozenset[str]] = {
    "dpo": frozenset(
        {
            *_LIMITS,
            "loss_type",
            "loss_weights",
            "label_smoothing",
            "use_weighting",
            "ld_alpha",
            "f_divergence_type",
            "f_alpha_divergence_coef",
            "discopop_tau",
            "reference_free",
        }
    ),
    "orpo": frozenset(_LIMITS),
    "kto": frozenset({*_LIMITS, "loss_type", "desirable_weight", "undesirable_weight"}),
    "simpo": frozenset({*_LIMITS, "label_smoothing", "simpo_gamma", "cpo_alpha"}),
}
# Unset loss_type means TRL's default for the task.
DEFAULT_LOSS_TYPES: dict[str, tuple[str, ...]] = {
    "dpo": ("sigmoid",),
    "kto": ("kto",),
    "orpo": ("orpo",),
    "simpo": ("simpo",),
}


class PreferenceSection(Section):
    beta: float = Field(0.1, gt=0, le=MAX_BETA)
    """dpo, kto, simpo: how far the policy may move from the reference (higher: less; IPO's τ);
    orpo: the weight of the odds-ratio term against the NLL (λ in the ORPO paper)."""
    loss_type: list[LossType] | None = None
    """dpo: one of sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot,
    aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm, or a list of them summed
    with loss_weights (e.g. [sigmoid, sft] is RPO); kto: kto or apo_zero_unpaired. Unset: TRL's
    default, sigmoid for dpo and kto for kto."""
    loss_weights: list[Annotated[float, Field(ge=0, le=MAX_WEIGHT)]] | None = None
    """dpo: one weight per loss_type entry; unset: 1.0 each."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """dpo: the label-flip probability of robust, aot and aot_unpaired, EXO's ε (exo_pair needs
    it above 0, typically 1e-3); simpo: conservative SimPO's smoothing."""
    use_weighting: bool = False
    """dpo: WPO's weighting of each pair by the policy's length-normalised probabilities."""
    ld_alpha: float | None = Field(None, ge=0, le=1)
    """dpo: LD-DPO's weight on the response tokens past the shorter side's length (1.0: plain
    DPO, 0.0: those tokens ignored); unset: no weighting."""
    f_divergence_type: FDivergence = "reverse_kl"
    """dpo: the f-DPO regulariser between policy and reference; other than reverse_kl only with
    sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop or sft."""
    f_alpha_divergence_coef: float = Field(0.5, ge=-1e3, le=1e3)
    """dpo: α of the alpha_divergence regulariser."""
    discopop_tau: float = Field(0.05, gt=0, le=1e3)
    """dpo: DiscoPOP's temperature τ (loss_type discopop)."""
    reference_free: bool = False
    """dpo: compare against a uniform reference (its log-probs taken as 0) instead of the
    starting weights, so no reference pass runs. TRL 1.16 dropped the key; it means what it
    meant in TRL's earlier DPOConfig."""
    desirable_weight: float = Field(1.0, gt=0, le=MAX_WEIGHT)
    """kto: weight of the desirable (label true) examples' losses, to balance unequal counts."""
    undesirable_weight: float = Field(1.0, gt=0, le=MAX_WEIGHT)
    """kto: weight of the undesirable (label false) examples' losses."""
    simpo_gamma: float = Field(0.5, ge=0, le=1e3)
    """simpo: the target reward margin γ (TRL CPOConfig's simpo_gamma)."""
    cpo_alpha: float = Field(0.0, ge=0, le=MAX_WEIGHT)
    """simpo: weight of the NLL on the chosen responses (CPO's BC term). 0 is SimPO as in its
    paper (TRL CPOConfig defaults to 1.0, which is CPO-SimPO)."""
    max_prompt_length: int | None = Field(None, ge=1, le=MAX_LENGTH)
    """Longest prompt, in tokens: a longer one is a bad row, named at load. Unset: the prompt
    must leave room for a response within model.max_seq_length."""
    max_completion_length: int | None = Field(None, ge=1, le=MAX_LENGTH)
    """Longest response, in tokens; longer ones are cut (TRL's keep_start). Unset: cut only at
    model.max_seq_length."""

    @model_validator(mode="before")
    @classmethod
    def _rpo_alpha_is_a_loss_weight(cls, data: object) -> object:
        # TRL's DPOConfig had rpo_alpha until 1.x wrote RPO as a weighted sft loss term.
        if isinstance(data, dict) and data.get("rpo_alpha") is not None:
            message = (
                "TRL 1.16 writes RPO as loss_type: [sigmoid, sft] with loss_weights: "
                f"[1.0, {data['rpo_alpha']}]; write that instead"
            )
            # At the key itself, so that the message gets its YAML line.
            raise ValidationError.from_exception_data(
                "PreferenceSection",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("rpo_alpha", message),
                        loc=("rpo_alpha",),
                        input=data["rpo_alpha"],
                    )
                ],
            )
        return data

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_or_a_list(cls, value: object) -> object:
        # TRL's DPOConfig takes a string as a one-item list (dpo_config.py __post_init__).
        return [value] if isinstance(value, str) else value

    @field_validator("loss_type")
    @classmethod
    def _some_loss(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must name at least one loss type, e.g. sigmoid; or leave it unset")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("names a loss type twice; weight it with loss_weights instead")
        return value

    def loss_types(self, task: str) -> tuple[str, ...]:
        """The loss types the task trains with: the ones set, or TRL's default for it."""
        if self.loss_type is not None and "loss_type" in TASK_KEYS[task]:
            return tuple(self.loss_type)
        return DEFAULT_LOSS_TYPES[task]

    def problems(self, task: str) -> list[tuple[str, str]]:
        """What this section's values get wrong for ``task``: (key, message), one per problem."""
        problems: list[tuple[str, str]] = []
        defaults = PreferenceSection()
        problems += [
            (
                key,
                f"does not apply to task: {task} (it reads: {', '.join(sorted(TASK_KEYS[task]))})",
            )
            for key in type(self).model_fields
            if key not in TASK_KEYS[task] and getattr(self, key) != getattr(defaults, key)
        ]
        if self.loss_type is not None and "loss_type" in TASK_KEYS[task]:
            allowed = DPO_LOSS_TYPES if task == "dpo" else KTO_LOSS_TYPES
            problems += [
                ("loss_type", f"{name} is not a {task} loss type; use one of {', '.join(allowed)}")
                for name in self.loss_type
                if name not in allowed
            ]
            if task == "kto" and len(self.loss_type) > 1:
                problems.append(("loss_type", "kto takes one loss type, not a list"))
        if task == "dpo":
            problems += self._dpo_problems()
        return problems

    def _dpo_problems(self) -> list[tuple[str, str]]:
        # TRL 1.16 DPOConfig.__post_init__ and DPOTrainer.__init__ refuse the same.
        types = self.loss_types("dpo")
        problems: list[tuple[str, str]] = []
        if self.loss_weights is not None and len(self.loss_weights) != len(types):
            problems.append(
                (
                    "loss_weights",
                    f"has {len(self.loss_weights)} weights for {len(types)} loss types; give one "
                    "weight per loss_type entry",
                )
            )
        if self.f_divergence_type != "reverse_kl" and not set(types) <= F_DIVERGENCE_LOSS_TYPES:
            problems.append(
                (
                    "f_divergence_type",
                    f"{self.f_divergence_type} works only with "
                    f"{', '.join(sorted(F_DIVERGENCE_LOSS_TYPES))}; use reverse_kl",
                )
            )
        if self.use_weighting and {"aot", "aot_unpaired"} & set(types):
            problems.append(("use_weighting", "does not work with the aot loss types; turn it off"))
        if "robust" in types and self.label_smoothing >= 0.5:
            problems.append(("label_smoothing", "robust needs it below 0.5 (0.1 is typical)"))
        if "exo_pair" in types and self.label_smoothing == 0:
            problems.append(("label_smoothing", "exo_pair needs it above 0 (1e-3 is typical)"))
        return problems

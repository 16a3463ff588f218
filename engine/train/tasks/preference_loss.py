"""DPO, ORPO, SimPO and KTO's arithmetic, from per-sequence log-probs, as TRL 1.16 does it.

TRL computes these inside its trainers' ``_compute_loss`` / ``get_batch_loss_metrics``, next to
the forward passes. Here they take the log-probs engine.speed.sequence_logps computed (without
the full logits) and return the loss and the metrics TRL logs under TRL's names (rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, and
nll_loss, log_odds_ratio, log_odds_chosen, kl where TRL has them). Metrics are detached 0-dim
tensors, so reading them is the caller's choice of when to synchronise.
tests/engine/train/tasks/test_preference_loss.py runs TRL's own trainer methods on the same
tensors and compares values, gradients and metrics.

Not here: TRL's entropy, logits/* and mean_token_accuracy metrics, which read the full logits
this path never builds, and the gathering across ranks (a caller's job, as for SFT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine.config.preference import PreferenceSection
from engine.speed.sequence_logps import SequenceLogps

# TRL 1.16 DPOTrainer's clamp for the alpha-divergence exponent, per dtype (TRL knows no
# other dtype and fails on float64; 80 keeps exp() finite there too).
_ALPHA_CLAMP = {"torch.float16": 11.0, "torch.bfloat16": 80.0, "torch.float32": 80.0}
_ALPHA_CLAMP_OTHER = 80.0
# The metrics every paired loss reports, under TRL's names (ORPO and SimPO add their own).
PAIR_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


@dataclass(frozen=True)
class PreferenceLossSettings:
    """The preference section's values one task reads, resolved (loss types and weights)."""

    task: str
    beta: float = 0.1
    loss_types: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] = (1.0,)
    label_smoothing: float = 0.0
    use_weighting: bool = False
    ld_alpha: float | None = None
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    discopop_tau: float = 0.05
    reference_free: bool = False
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    simpo_gamma: float = 0.5
    cpo_alpha: float = 0.0

    @classmethod
    def from_section(cls, section: PreferenceSection, task: str) -> PreferenceLossSettings:
        types = section.loss_types(task)
        weights = section.loss_weights if task == "dpo" and section.loss_weights else None
        return cls(
            task=task,
            beta=section.beta,
            loss_types=types,
            loss_weights=tuple(weights) if weights else (1.0,) * len(types),
            label_smoothing=section.label_smoothing,
            use_weighting=section.use_weighting,
            ld_alpha=section.ld_alpha,
            f_divergence_type=section.f_divergence_type,
            f_alpha_divergence_coef=section.f_alpha_divergence_coef,
            discopop_tau=section.discopop_tau,
            reference_free=section.reference_free,
            desirable_weight=section.desirable_weight,
            undesirable_weight=section.undesirable_weight,
            simpo_gamma=section.simpo_gamma,
            cpo_alpha=section.cpo_alpha,
        )

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads the reference model's log-probs (ORPO and SimPO never do)."""
        return self.task in ("dpo", "kto") and not self.reference_free


@dataclass(frozen=True)
class PreferenceLoss:
    loss: Any
    metrics: dict[str, Any] = field(default_factory=dict)


def pair_totals(
    chosen: SequenceLogps, rejected: SequenceLogps, ld_alpha: float | None
) -> tuple[Any, Any]:
    """Summed response log-probs of each side; with LD-DPO's ``ld_alpha``, the tokens past the
    shorter side's response length count ``ld_alpha`` times (TRL 1.16's shared/tail split)."""
    if ld_alpha is None:
        return chosen.total, rejected.total
    import torch

    shared = torch.minimum(chosen.count, rejected.count)[:, None]
    totals = []
    for side in (chosen, rejected):
        position = side.mask.cumsum(dim=1)
        shared_mask = (position > 0) & (position <= shared)
        tail_mask = position > shared
        totals.append(
            (side.token * shared_mask).sum(dim=1) + ld_alpha * (side.token * tail_mask).sum(dim=1)
        )
    return totals[0], totals[1]


def mean_nll(logps: SequenceLogps) -> Any:
    """Cross-entropy averaged over every scored token of the batch (``nn.CrossEntropyLoss``'s
    mean, as TRL's NLL terms take it)."""
    return -logps.token.sum() / logps.mask.sum()


def dpo_loss(
    settings: PreferenceLossSettings,
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    reference: tuple[Any, Any] | None,
) -> PreferenceLoss:
    """TRL 1.16 DPOTrainer._compute_loss from log-probs: every loss_type, summed with
    loss_weights, f-divergences, LD-DPO and WPO weighting.

    ``reference``: the reference's (chosen, rejected) totals, LD-weighted like the policy's
    (pair_totals); None with reference_free, where they count as 0.
    """
    import torch
    import torch.nn.functional as F

    beta, smoothing = settings.beta, settings.label_smoothing
    chosen_logps, rejected_logps = pair_totals(chosen, rejected, settings.ld_alpha)
    if reference is None:
        if not settings.reference_free:
            raise ValueError("DPO needs the reference log-probs unless reference_free is set")
        ref_chosen, ref_rejected = torch.zeros_like(chosen_logps), torch.zeros_like(rejected_logps)
    else:
        ref_chosen, ref_rejected = reference
    chosen_ratios = chosen_logps - ref_chosen
    rejected_ratios = rejected_logps - ref_rejected
    chosen_scores, rejected_scores = _f_scores(settings, chosen_ratios, rejected_ratios)
    delta = chosen_scores - rejected_scores
    chosen_count = chosen.count.clamp(min=1)
    rejected_count = rejected.count.clamp(min=1)

    loss: Any = 0.0
    for loss_type, weight in zip(settings.loss_types, settings.loss_weights, strict=True):
        if loss_type == "sigmoid":
            per_pair = -F.logsigmoid(beta * delta)
        elif loss_type == "hinge":
            per_pair = torch.relu(1 - beta * delta)
        elif loss_type == "ipo":
            # Counts from the shifted labels; TRL's unshifted completion_mask gives the same
            # whenever position 0 is prompt, which the chat template's header always is.
            # TRL averages over response tokens so that β is comparable across lengths.
            average = chosen_scores / chosen_count - rejected_scores / rejected_count
            per_pair = (average - 1 / (2 * beta)) ** 2
        elif loss_type == "exo_pair":
            epsilon = torch.tensor(smoothing, device=delta.device)
            per_pair = torch.sigmoid(beta * delta) * (
                F.logsigmoid(beta * delta) - torch.log1p(-epsilon)
            ) + torch.sigmoid(-beta * delta) * (F.logsigmoid(-beta * delta) - torch.log(epsilon))
        elif loss_type == "nca_pair":
            per_pair = (
                -F.logsigmoid(beta * chosen_ratios)
                - 0.5 * F.logsigmoid(-beta * chosen_ratios)
                - 0.5 * F.logsigmoid(-beta * rejected_ratios)
            )
        elif loss_type == "robust":
            clean = -(1 - smoothing) * F.logsigmoid(beta * delta)
            flipped = -smoothing * F.logsigmoid(-beta * delta)
            per_pair = (clean - flipped) / (1 - 2 * smoothing)
        elif loss_type == "bco_pair":
            per_pair = -F.logsigmoid(beta * chosen_ratios) - F.logsigmoid(-beta * rejected_ratios)
        elif loss_type == "sppo_hard":
            per_pair = (chosen_ratios - 0.5 / beta) ** 2 + (rejected_ratios + 0.5 / beta) ** 2
        elif loss_type in ("aot", "aot_unpaired"):
            if loss_type == "aot":
                first = torch.sort(chosen_logps - rejected_logps, dim=0).values
                second = torch.sort(ref_chosen - ref_rejected, dim=0).values
            else:
                first = torch.sort(chosen_ratios, dim=0).values
                second = torch.sort(rejected_ratios, dim=0).values
            sorted_delta = first - second
            per_pair = (
                -F.logsigmoid(beta * sorted_delta) * (1 - smoothing)
                - F.logsigmoid(-beta * sorted_delta) * smoothing
            )
        elif loss_type == "apo_zero":
            per_pair = (
                1 - torch.sigmoid(beta * chosen_ratios) + torch.sigmoid(beta * rejected_ratios)
            )
        elif loss_type == "apo_down":
            per_pair = (
                torch.sigmoid(beta * chosen_ratios)
                + 1
                - torch.sigmoid(beta * (chosen_ratios - rejected_ratios))
            )
        elif loss_type == "discopop":
            logits = delta * beta
            modulation = torch.sigmoid(logits / settings.discopop_tau)
            per_pair = -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
        elif loss_type == "sft":
            # The raw chosen log-probs, not LD-weighted, as in TRL.
            per_pair = mean_nll(chosen).expand(chosen_logps.size(0))
        elif loss_type == "sigmoid_norm":
            average = chosen_scores / chosen_count - rejected_scores / rejected_count
            per_pair = -F.logsigmoid(beta * average)
        else:
            raise ValueError(f"unknown DPO loss type {loss_type!r}")
        if settings.use_weighting:
            per_pair = per_pair * _wpo_weights(chosen) * _wpo_weights(rejected)
        loss = loss + per_pair.mean() * weight

    chosen_rewards = beta * chosen_ratios.detach()
    rejected_rewards = beta * rejected_ratios.detach()
    return PreferenceLoss(
        loss=loss,
        metrics=_pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps),
    )


def simpo_loss(
    settings: PreferenceLossSettings, chosen: SequenceLogps, rejected: SequenceLogps
) -> PreferenceLoss:
    """TRL 1.16 CPOTrainer with loss_type simpo: mean response log-probs, the margin γ/β,
    conservative smoothing, plus cpo_alpha times the chosen responses' NLL."""
    import torch
    import torch.nn.functional as F

    beta, smoothing = settings.beta, settings.label_smoothing
    chosen_logps, rejected_logps = chosen.mean, rejected.mean
    logits = chosen_logps - rejected_logps - settings.simpo_gamma / beta
    losses = (
        -F.logsigmoid(beta * logits) * (1 - smoothing) - F.logsigmoid(-beta * logits) * smoothing
    )
    nll = mean_nll(chosen) if settings.cpo_alpha else torch.zeros((), device=logits.device)
    metrics = _pair_metrics(
        beta * chosen_logps.detach(), beta * rejected_logps.detach(), chosen_logps, rejected_logps
    )
    metrics["nll_loss"] = nll.detach()
    return PreferenceLoss(loss=losses.mean() + settings.cpo_alpha * nll, metrics=metrics)


def orpo_loss(
    settings: PreferenceLossSettings,
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    chosen_nll: Any,
) -> PreferenceLoss:
    """TRL 1.16 ORPOTrainer: the chosen NLL minus β times the log-sigmoid of the log odds
    ratio of the mean response log-probs.

    ``chosen_nll``: the NLL term. TRL takes it over the whole chosen sequence, prompt included
    (mean_nll of the chosen side scored with every non-padding label), not over the response.
    """
    import torch.nn.functional as F

    chosen_logps, rejected_logps = chosen.mean.float(), rejected.mean.float()
    log_odds = (chosen_logps - rejected_logps) - (
        _log1mexp(chosen_logps) - _log1mexp(rejected_logps)
    )
    ratio = F.logsigmoid(log_odds)
    beta = settings.beta
    metrics = _pair_metrics(
        beta * chosen_logps.detach(), beta * rejected_logps.detach(), chosen_logps, rejected_logps
    )
    metrics["nll_loss"] = chosen_nll.detach()
    metrics["log_odds_ratio"] = ratio.mean().detach()
    metrics["log_odds_chosen"] = log_odds.mean().detach()
    return PreferenceLoss(loss=chosen_nll - (beta * ratio).mean(), metrics=metrics)


def pair_loss(
    settings: PreferenceLossSettings,
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    *,
    reference: tuple[Any, Any] | None = None,
    chosen_nll: Any = None,
) -> PreferenceLoss:
    """The paired task's loss: dpo (with ``reference``), simpo, or orpo (with ``chosen_nll``)."""
    if settings.task == "dpo":
        return dpo_loss(settings, chosen, rejected, reference)
    if settings.task == "simpo":
        return simpo_loss(settings, chosen, rejected)
    if settings.task == "orpo":
        if chosen_nll is None:
            raise ValueError("ORPO needs chosen_nll, the NLL of the whole chosen sequences")
        return orpo_loss(settings, chosen, rejected, chosen_nll)
    raise ValueError(f"task {settings.task!r} has no paired loss (KTO's is kto_loss)")


def kto_loss(
    settings: PreferenceLossSettings,
    logps: Any,
    desirable: Any,
    reference: Any,
    kl: tuple[Any, Any] | None,
) -> PreferenceLoss:
    """TRL 1.16 KTOTrainer._compute_loss from summed response log-probs.

    ``logps``, ``reference``: [batch] policy and reference totals; ``desirable``: [batch] bool
    labels; ``kl``: the policy's and the reference's totals on the mismatched pairs
    (kl_completion_order), whose mean difference, clamped at 0 and without gradient, is KTO's
    reference point z0. None for apo_zero_unpaired, which has none (TRL's calculate_KL).
    """
    import torch

    beta = settings.beta
    desirable = desirable.to(device=logps.device, dtype=torch.bool)
    if kl is None:
        z0 = torch.zeros(1, device=logps.device)
    else:
        z0 = (kl[0] - kl[1]).mean().detach().clamp(min=0)
    apo = settings.loss_types == ("apo_zero_unpaired",)
    chosen_ratios = logps[desirable] - reference[desirable]
    rejected_ratios = logps[~desirable] - reference[~desirable]
    if apo:
        chosen_losses = 1 - torch.sigmoid(beta * chosen_ratios)
        rejected_losses = torch.sigmoid(beta * rejected_ratios)
    else:
        chosen_losses = 1 - torch.sigmoid(beta * (chosen_ratios - z0))
        rejected_losses = 1 - torch.sigmoid(beta * (z0 - rejected_ratios))
    losses = torch.cat(
        (settings.desirable_weight * chosen_losses, settings.undesirable_weight * rejected_losses)
    )
    metrics: dict[str, Any] = {"kl": z0.detach().reshape(())}
    chosen_count, rejected_count = int(chosen_ratios.numel()), int(rejected_ratios.numel())
    if chosen_count:
        metrics["rewards/chosen"] = (beta * chosen_ratios.detach()).nansum() / chosen_count
        metrics["logps/chosen"] = logps[desirable].detach().nansum() / chosen_count
    if rejected_count:
        metrics["rewards/rejected"] = (beta * rejected_ratios.detach()).nansum() / rejected_count
        metrics["logps/rejected"] = logps[~desirable].detach().nansum() / rejected_count
    if chosen_count and rejected_count:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return PreferenceLoss(loss=losses.nanmean(), metrics=metrics)


def kl_completion_order(count: int) -> list[int]:
    """Which completion each prompt is paired with for KTO's KL estimate: the previous row's,
    the first taking the last (TRL 1.16's collator, ``completions[-1:] + completions[:-1]``)."""
    return [count - 1, *range(count - 1)] if count else []


def _f_scores(settings: PreferenceLossSettings, chosen: Any, rejected: Any) -> tuple[Any, Any]:
    """f'(policy / reference) of each side, the f-DPO generalisation of the log-ratio."""
    import torch
    import torch.nn.functional as F

    kind, alpha = settings.f_divergence_type, settings.f_alpha_divergence_coef
    if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(alpha - 1.0) < 1e-6):
        return chosen, rejected
    if kind == "forward_kl":
        return 1 - torch.exp(-chosen), 1 - torch.exp(-rejected)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(chosen), math.log(2) + F.logsigmoid(rejected)
    if kind == "alpha_divergence":
        coef = 1.0 / (alpha - 1.0)
        scores = []
        for ratio in (chosen, rejected):
            exponent = (alpha - 1.0) * ratio
            capped = torch.clamp(
                exponent.float(), max=_ALPHA_CLAMP.get(str(exponent.dtype), _ALPHA_CLAMP_OTHER)
            )
            scores.append((torch.exp(capped) - 1.0).to(exponent.dtype) * coef)
        return scores[0], scores[1]
    raise ValueError(f"unknown f_divergence_type {kind!r}")


def _wpo_weights(side: SequenceLogps) -> Any:
    """WPO's weight of each sequence: exp of the mean of log p - log Σp², without gradient."""
    import torch

    if side.log_sum_sq_probs is None:
        raise ValueError("use_weighting needs the log-probs computed with_log_sum_sq_probs")
    with torch.no_grad():
        aligned = (side.token - side.log_sum_sq_probs) * side.mask
    return torch.exp(aligned.sum(dim=1) / side.count.clamp(min=1))


def _log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, branching at -ln 2 against cancellation (TRL's)."""
    import torch

    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _pair_metrics(
    chosen_rewards: Any, rejected_rewards: Any, chosen_logps: Any, rejected_logps: Any
) -> dict[str, Any]:
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }

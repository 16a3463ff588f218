"""GRPO's arithmetic, exactly as TRL 1.16's GRPOTrainer does it: completion masks, group-relative
advantages, and the clipped policy loss with its KL term and its four aggregations.

Inputs are per-token log-probs that the caller computes chunk by chunk (the policy's with grad,
the old policy's and the reference's without), so nothing here ever holds logits. The tests in
tests/engine/train/tasks/test_grpo_loss.py hold every function to TRL's own code on the same
tensors; the TRL function each one follows is named in its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo"]
ScaleRewards = Literal["group", "batch", "none"]
# TRL adds this to the spread before dividing, so a group of equal rewards gives 0, not NaN.
STD_FLOOR = 1e-4


@dataclass(frozen=True)
class GrpoLossSettings:
    """The grpo section's loss knobs, as plain values (TRL's GRPOConfig names)."""

    loss_type: LossType = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    max_completion_length: int = 512

    @property
    def upper_epsilon(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


@dataclass(frozen=True)
class Advantages:
    """One advantage per completion, and the figures the dashboard shows about the rewards."""

    advantages: torch.Tensor
    """[completions]; 0 for a completion no reward could score."""
    rewards: torch.Tensor
    """[completions]: the weighted total, NaN where no reward could score."""
    std_rewards: torch.Tensor
    """[completions]: the spread each advantage was divided by (before STD_FLOOR)."""
    zero_std_share: float
    """Share of completions whose group (or batch) had one reward for all: no signal."""


@dataclass(frozen=True)
class GrpoLossOutput:
    loss: torch.Tensor
    """What to call backward on: scaled for gradient accumulation as TRL scales it."""
    policy_loss: torch.Tensor
    """The loss of this micro-batch before that scaling (detached), for the log."""
    kl: torch.Tensor | None
    """Mean k3 KL to the reference over completion tokens; None when beta is 0."""
    entropy: torch.Tensor | None
    """Mean token entropy over completion tokens, when the caller passed entropies."""
    clip_low: torch.Tensor
    """Share of tokens whose ratio fell below 1 - epsilon with a negative advantage."""
    clip_high: torch.Tensor
    """Share of tokens whose ratio rose above 1 + epsilon_high with a positive advantage."""
    clip_region: torch.Tensor
    """Share clipped either way."""
    clip_low_min: torch.Tensor
    """Lowest per-completion share of low-clipped tokens."""
    clip_high_max: torch.Tensor
    """Highest per-completion share of high-clipped tokens."""


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """1 up to and including each row's first end-of-sequence token, 0 after it; all ones for
    a row that never ended (TRL: GRPOTrainer._generate_single_turn)."""
    is_eos = torch.isin(
        completion_ids, torch.tensor(list(eos_token_ids), device=completion_ids.device)
    )
    ended = is_eos.any(dim=1)
    first_eos = torch.full(
        (is_eos.size(0),), is_eos.size(1), dtype=torch.long, device=completion_ids.device
    )
    first_eos[ended] = is_eos.int().argmax(dim=1)[ended]
    positions = torch.arange(is_eos.size(1), device=completion_ids.device).expand(
        is_eos.size(0), -1
    )
    return (positions <= first_eos.unsqueeze(1)).int()


def nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction; NaN from fewer than two
    values (TRL: trl.trainer.utils.nanstd)."""
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(values), dim=dim, keepdim=True)
    correction = torch.where(
        count > 1, count / (count - 1), torch.full_like(variance, float("nan"))
    )
    std = torch.sqrt(variance * correction)
    return std.squeeze(dim) if dim is not None else std.reshape(())


def group_advantages(
    rewards_per_function: torch.Tensor,
    weights: torch.Tensor,
    *,
    num_generations: int,
    scale_rewards: ScaleRewards,
) -> Advantages:
    """Each completion's weighted reward against its group's mean, divided by the group's (or
    the batch's) spread unless ``scale_rewards`` is none (TRL: the sum_then_normalize branch of
    GRPOTrainer._generate_and_score_completions).

    ``rewards_per_function`` is [completions, rewards] with NaN where a reward returned None;
    completions of one prompt sit next to each other. A completion every reward left NaN is
    left out of its group's mean and spread and gets advantage 0."""
    unscorable = torch.isnan(rewards_per_function).all(dim=1)
    rewards = (rewards_per_function * weights.to(rewards_per_function.device).unsqueeze(0)).nansum(
        dim=1
    )
    rewards[unscorable] = torch.nan
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations, dim=0)
    if scale_rewards == "batch":
        std = (
            nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        )
    else:  # group, and none, which keeps the group spread for the zero-spread share
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + STD_FLOOR)
    zero_std = torch.isclose(std, torch.zeros_like(std))
    return Advantages(
        advantages=torch.nan_to_num(advantages, nan=0.0),
        rewards=rewards,
        std_rewards=std,
        zero_std_share=zero_std.float().mean().item(),
    )


def grpo_loss(
    per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    settings: GrpoLossSettings,
    *,
    old_per_token_logps: torch.Tensor | None = None,
    ref_per_token_logps: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    accumulation_steps: int = 1,
    tokens_in_step: float | torch.Tensor | None = None,
) -> GrpoLossOutput:
    """The clipped surrogate loss of one micro-batch (TRL: GRPOTrainer._compute_loss with
    token-level importance sampling, as its defaults have it).

    Tensors are [completions, completion tokens]; ``advantages`` is [completions]. Without
    ``old_per_token_logps`` (one iteration, generation in step with the optimizer) the ratio
    is 1 and only its gradient counts, as in TRL. grpo, bnpo and dr_grpo divide by
    ``accumulation_steps``; dapo divides by ``tokens_in_step``: the completion tokens trained
    in the whole optimizer step on this process (TRL: num_items_in_batch / processes ×
    accumulation steps / steps per generation)."""
    mask = mask.to(per_token_logps.dtype)
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    old = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
    ratio = torch.exp(per_token_logps - old)
    low, high = settings.epsilon, settings.upper_epsilon
    clipped_ratio = torch.clamp(ratio, 1 - low, 1 + high)
    per_token_loss = -torch.min(ratio * advantages, clipped_ratio * advantages)
    per_token_kl = None
    if settings.beta != 0.0:
        if ref_per_token_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        # k3, the unbiased low-variance estimator of KL(policy || reference).
        delta = ref_per_token_logps - per_token_logps
        per_token_kl = torch.exp(delta) - delta - 1
        per_token_loss = per_token_loss + settings.beta * per_token_kl
    loss = _aggregate(per_token_loss, mask, settings, tokens_in_step)
    policy_loss = loss.detach()
    if settings.loss_type != "dapo":
        loss = loss / accumulation_steps
    is_low = (ratio < 1 - low) & (advantages < 0)
    is_high = (ratio > 1 + high) & (advantages > 0)
    return GrpoLossOutput(
        loss=loss,
        policy_loss=policy_loss,
        kl=None if per_token_kl is None else _masked_mean(per_token_kl.detach(), mask),
        entropy=None if entropies is None else _masked_mean(entropies.detach(), mask),
        clip_low=_masked_mean(is_low.float(), mask),
        clip_high=_masked_mean(is_high.float(), mask),
        clip_region=_masked_mean((is_low | is_high).float(), mask),
        clip_low_min=_nanmin(_per_sequence_mean(is_low.float(), mask)),
        clip_high_max=_nanmax(_per_sequence_mean(is_high.float(), mask)),
    )


def _aggregate(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    settings: GrpoLossSettings,
    tokens_in_step: float | torch.Tensor | None,
) -> torch.Tensor:
    masked = per_token_loss * mask
    if settings.loss_type == "grpo":  # each completion's mean, then the mean over completions
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if settings.loss_type == "bnpo":  # over the micro-batch's tokens
        return masked.sum() / mask.sum().clamp(min=1.0)
    if settings.loss_type == "dr_grpo":  # a constant: no length bias at all
        return masked.sum() / (per_token_loss.size(0) * settings.max_completion_length)
    if settings.loss_type == "dapo":  # over the optimizer step's tokens
        if tokens_in_step is None:
            raise ValueError("loss_type dapo needs tokens_in_step")
        normalizer = torch.as_tensor(
            tokens_in_step, dtype=per_token_loss.dtype, device=per_token_loss.device
        )
        return masked.sum() / normalizer.clamp(min=1.0)
    raise ValueError(f"unknown loss_type {settings.loss_type!r}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _per_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # No clamp, as in TRL: an empty completion gives NaN, which nanmin/nanmax then skip.
    return (values * mask).sum(-1) / mask.sum(-1)


def _nanmin(values: torch.Tensor) -> torch.Tensor:
    finite = values[~torch.isnan(values)]
    return finite.min() if finite.numel() else torch.tensor(float("nan"))


def _nanmax(values: torch.Tensor) -> torch.Tensor:
    finite = values[~torch.isnan(values)]
    return finite.max() if finite.numel() else torch.tensor(float("nan"))

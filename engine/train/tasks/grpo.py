"""GRPO as an engine.train.tasks.task.Task: each micro-batch samples its completions from the
current policy, scores them with the rewards, and trains on their group-relative advantages.

A micro-batch is a list of prompts (engine.data.prepare_prompts). ``loss_sum`` samples
``num_generations`` completions per prompt (eval mode, no grad, KV cache on, as
engine.models.generate does, so the fast path's training-mode layers never see generation),
scores them (engine.train.tasks.rewards), computes the advantages and the clipped loss with
grpo_loss (TRL 1.16's arithmetic) over the completion tokens' log-probs, taken chunk by chunk
on the training's path (engine.speed.sequence_logps).

With one iteration per batch (num_iterations 1) the old policy is the current one detached, so
the ratio is 1 and only its gradient counts, as in TRL. beta > 0 scores the reference with the
adapter disabled (LoRA, QLoRA); full fine-tuning has no reference to switch to and is refused.

Normalisation: ``loss_sum`` returns the micro-batch's loss (grpo_loss's aggregation over its
completions) times its prompts, and ``trained_token_count`` counts prompts, so the loop's
division gives the prompt-weighted mean of the micro-batches' losses: TRL's loss divided by
the accumulation steps for grpo, bnpo and dr_grpo when the micro-batches are equal. dapo's
normaliser is the micro-batch's completion tokens: TRL's (the step's tokens) where a step is
one micro-batch; with gradient accumulation each micro-batch is normalised by its own tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.core.errors import ConfigError
from engine.data.encode import EncodedExample
from engine.data.prepare_prompts import PromptExample
from engine.runs.control import RunAborted
from engine.speed.loss import IGNORE, supports_chunked_loss
from engine.train.tasks import sft
from engine.train.tasks.grpo_loss import (
    Advantages,
    GrpoLossOutput,
    GrpoLossSettings,
    completion_mask,
    group_advantages,
    grpo_loss,
)
from engine.train.tasks.preference import score
from engine.train.tasks.rewards import Reward, RewardScores, score_completions
from engine.train.tasks.task import MetricSums


@dataclass(frozen=True)
class GrpoSettings:
    """The grpo section as the task reads it."""

    loss: GrpoLossSettings
    num_generations: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    scale_rewards: str = "group"
    on_reward_error: str = "stop"
    num_iterations: int = 1

    @classmethod
    def from_section(cls, section: Any) -> GrpoSettings:
        loss = GrpoLossSettings(
            loss_type=section.loss_type,
            epsilon=section.epsilon,
            epsilon_high=section.epsilon_high,
            beta=section.beta,
            max_completion_length=section.max_completion_length,
        )
        return cls(
            loss=loss,
            num_generations=section.num_generations,
            temperature=section.temperature,
            top_p=section.top_p,
            scale_rewards=section.scale_rewards,
            on_reward_error=section.on_reward_error,
            num_iterations=section.num_iterations,
        )


def check_settings(settings: GrpoSettings, *, uses_adapter: bool, sharded: bool = False) -> None:
    """What this loop cannot train, refused before any weights load."""
    if sharded:
        raise ConfigError(
            "task: grpo samples its completions with the whole model on each GPU, and this "
            "run shards the weights across the GPUs (FSDP).",
            hint="Train GRPO on one GPU, or with LoRA on several (each GPU holds the model).",
        )
    if settings.loss.beta > 0 and not uses_adapter:
        raise ConfigError(
            f"grpo.beta {settings.loss.beta} needs a reference model, and full fine-tuning "
            "keeps none (LoRA and QLoRA use the base with the adapter off).",
            hint="Set grpo.beta: 0 (TRL's default), or train with method: lora.",
        )
    if settings.num_iterations != 1:
        raise ConfigError(
            f"grpo.num_iterations {settings.num_iterations}: this build samples new "
            "completions every optimizer step (one iteration).",
            hint="Set grpo.num_iterations: 1.",
        )


@dataclass(frozen=True)
class Rollout:
    """The sampled completions of a micro-batch: [prompts × num_generations] rows, grouped."""

    completion_ids: torch.Tensor
    """[completions, tokens] as generated (padding after each end)."""
    mask: torch.Tensor
    """[completions, tokens]: 1 up to and including each one's first end-of-sequence token."""


class GrpoTask:
    """engine.train.tasks.task.Task for grpo."""

    def __init__(
        self,
        settings: GrpoSettings,
        rewards: Sequence[Reward],
        *,
        eos_token_ids: Sequence[int],
        decode: Callable[[list[int]], str],
        should_stop: Callable[[], bool] = lambda: False,
        warn: Callable[[str], None] = lambda text: None,
    ) -> None:
        """``should_stop``: asked after every sampled token (a stop or SIGTERM ends the step);
        ``warn``: told of each group a reward failure left out (on_reward_error skip_group)."""
        self.settings = settings
        self.rewards = list(rewards)
        self.eos_token_ids = list(eos_token_ids)
        self.decode = decode
        self.should_stop = should_stop
        self.warn = warn
        self._metrics = MetricSums()

    def collate(self, examples: Sequence[Any], pad_token_id: int, device: str) -> dict[str, Any]:
        return {"prompts": list(examples), "pad_token_id": pad_token_id}

    def trained_token_count(self, examples: Sequence[Any]) -> int:
        return len(examples)  # prompts: see the module's note on normalisation

    def supports_chunked_loss(self, model: Any) -> bool:
        return supports_chunked_loss(model)

    def take_metrics(self) -> dict[str, tuple[Any, float]]:
        return self._metrics.take()

    def loss_sum(
        self, model: Any, batch: dict[str, Any], amp_dtype: Any, device: str, chunked: bool
    ) -> Any:
        prompts: list[PromptExample] = batch["prompts"]
        pad = batch["pad_token_id"]
        rollout = self.sample(model, prompts, pad, device)
        scores = self.score(prompts, rollout)
        output, advantages = self.loss(
            model, prompts, rollout, scores, pad, amp_dtype, device, chunked
        )
        if torch.is_grad_enabled():
            self._add_metrics(scores, advantages, output, rollout)
        return output.loss * len(prompts)

    def sample(
        self, model: Any, prompts: Sequence[PromptExample], pad_token_id: int, device: str
    ) -> Rollout:
        """``num_generations`` completions of each prompt, sampled from ``model`` as it is."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        s, n = self.settings, self.settings.num_generations
        width = max(len(p.prompt_ids) for p in prompts)
        ids = [[pad_token_id] * (width - len(p.prompt_ids)) + p.prompt_ids for p in prompts]
        mask = [[0] * (width - len(p.prompt_ids)) + [1] * len(p.prompt_ids) for p in prompts]
        input_ids = torch.tensor(ids, device=device).repeat_interleave(n, dim=0)
        attention = torch.tensor(mask, device=device).repeat_interleave(n, dim=0)
        should_stop = self.should_stop

        class Watch(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device
                )

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    do_sample=True,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    top_k=0,  # TRL samples from the whole vocabulary unless top_k is set
                    max_new_tokens=s.loss.max_completion_length,
                    pad_token_id=pad_token_id,
                    eos_token_id=self.eos_token_ids,
                    use_cache=True,
                    stopping_criteria=StoppingCriteriaList([Watch()]),
                )
        finally:
            model.train(was_training)
        if should_stop():
            # Completions cut short would train a different step: the step is dropped, and a
            # resume repeats it from the last checkpoint.
            raise RunAborted()
        completion_ids = out[:, width:]
        return Rollout(completion_ids, completion_mask(completion_ids, self.eos_token_ids))

    def score(self, prompts: Sequence[PromptExample], rollout: Rollout) -> RewardScores:
        """Every completion scored by every reward (a failure ends the run or skips its
        prompt's group, as grpo.on_reward_error says)."""
        n = self.settings.num_generations
        kept = [
            row[: int(length)].tolist()
            for row, length in zip(rollout.completion_ids, rollout.mask.sum(1), strict=True)
        ]
        texts = [self.decode(ids) for ids in kept]
        repeated = [p for p in prompts for _ in range(n)]
        completions: list[Any] = [
            text if isinstance(p.prompt, str) else [{"role": "assistant", "content": text}]
            for p, text in zip(repeated, texts, strict=True)
        ]
        columns = {key: [p.columns[key] for p in repeated] for key in prompts[0].columns}
        scores = score_completions(
            self.rewards,
            prompts=[p.prompt for p in repeated],
            completions=completions,
            completion_ids=kept,
            columns=columns,
            rows=[p.row for p in repeated],
            num_generations=n,
            on_error="stop" if self.settings.on_reward_error == "stop" else "skip_group",
        )
        for problem in scores.problems:
            self.warn(f"{problem} Its prompt's completions were left out of the step.")
        return scores

    def loss(
        self,
        model: Any,
        prompts: Sequence[PromptExample],
        rollout: Rollout,
        scores: RewardScores,
        pad_token_id: int,
        amp_dtype: Any,
        device: str,
        chunked: bool,
    ) -> tuple[GrpoLossOutput, Advantages]:
        """grpo_loss over the completion tokens, and the advantages it trained on."""
        s = self.settings
        weights = torch.tensor([reward.weight for reward in self.rewards])
        advantages = group_advantages(
            scores.per_function,
            weights,
            num_generations=s.num_generations,
            scale_rewards=s.scale_rewards,  # type: ignore[arg-type]
        )
        batch = self.sequences(prompts, rollout, pad_token_id, device)
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None):
            logps = score(model, batch, chunked, squares=False)
            reference = None
            if s.loss.beta != 0.0:
                with torch.no_grad(), model.disable_adapter():
                    reference = score(model, batch, chunked, squares=False).token
        output = grpo_loss(
            logps.token,
            logps.mask,
            advantages.advantages.to(device=logps.token.device, dtype=logps.token.dtype),
            s.loss,
            ref_per_token_logps=reference,
            tokens_in_step=logps.mask.sum(),
        )
        return output, advantages

    def sequences(
        self, prompts: Sequence[PromptExample], rollout: Rollout, pad_token_id: int, device: str
    ) -> dict[str, Any]:
        """Prompt and completion as one right-padded row each, the completion's kept tokens
        labelled: the positions generation gave them, on the training's forward."""
        n = self.settings.num_generations
        rows = []
        for index, (ids, length) in enumerate(
            zip(rollout.completion_ids.tolist(), rollout.mask.sum(1).tolist(), strict=True)
        ):
            prompt = prompts[index // n].prompt_ids
            kept = ids[: int(length)]
            rows.append(EncodedExample(prompt + kept, [IGNORE] * len(prompt) + kept))
        batch = sft.collate(rows, pad_token_id, device)
        del batch["trained_index"]  # sequence_logps finds the completion positions itself
        return batch

    def _add_metrics(
        self,
        scores: RewardScores,
        advantages: Advantages,
        output: GrpoLossOutput,
        rollout: Rollout,
    ) -> None:
        """TRL's names, each weighted by the completions (or tokens) it averages."""
        lengths = rollout.mask.sum(1)
        rewards = advantages.rewards
        scored = ~torch.isnan(rewards)
        count = float(rewards.numel())
        metrics: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}

        def put(name: str, value: torch.Tensor, weight: float) -> None:
            if weight > 0 and not torch.isnan(value):
                metrics[name] = value.detach().double().cpu()
                weights[name] = weight

        put(
            "reward", rewards[scored].mean() if scored.any() else rewards.sum(), float(scored.sum())
        )
        put("reward_std", torch.nanmean(advantages.std_rewards), count)
        for index, reward in enumerate(self.rewards):
            column = scores.per_function[:, index]
            valid = ~torch.isnan(column)
            if valid.any():
                put(f"rewards/{reward.name}/mean", column[valid].mean(), float(valid.sum()))
        put("frac_reward_zero_std", torch.tensor(advantages.zero_std_share), count)
        put("completions/mean_length", lengths.float().mean(), count)
        ended = torch.isin(
            rollout.completion_ids,
            torch.tensor(self.eos_token_ids, device=rollout.completion_ids.device),
        ).any(1)
        put("completions/clipped_ratio", (~ended).float().mean(), count)
        tokens = float(lengths.sum())
        if output.kl is not None:
            put("kl", output.kl, tokens)
        put("clip_ratio/low_mean", output.clip_low, tokens)
        put("clip_ratio/high_mean", output.clip_high, tokens)
        put("clip_ratio/region_mean", output.clip_region, tokens)
        self._metrics.add(metrics, weights)

"""GRPO's arithmetic against TRL 1.16's own GRPOTrainer, on the same random tensors.

TRL keeps advantages inside ``_generate_and_score_completions`` and the loss inside
``_compute_loss``, both methods of a trainer whose ``__init__`` loads a model, a tokenizer and
a whole training setup. The trainer here is made with ``object.__new__`` and given only the
attributes those two methods read (TRL's defaults where they have one), and the methods that
generate text and run the model are replaced on the instance by ones that return the tensors
under test. TRL's own code then computes the advantages and the loss, unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from transformers import TrainerState
from trl import GRPOTrainer

from engine.config.grpo import RewardSpec
from engine.train.tasks.grpo_loss import (
    GrpoLossSettings,
    completion_mask,
    group_advantages,
    grpo_loss,
)
from engine.train.tasks.rewards import Reward, load_rewards, score_completions

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
GENERATIONS = 4
GROUPS = 3
TOKENS = 7
MAX_COMPLETION_LENGTH = 9
PAD = 0


class _Policy(torch.nn.Module):
    """The smallest model TRL's methods accept: they read ``training`` and whether gradient
    checkpointing is on; the log-probs come from the replaced method, not from here."""

    is_gradient_checkpointing = False


def trl_trainer(**config: Any) -> GRPOTrainer:
    defaults: dict[str, Any] = {
        "loss_type": "dapo",
        "scale_rewards": "group",
        "beta": 0.0,
        "epsilon": 0.2,
        "epsilon_high": None,
        "num_generations": GENERATIONS,
        "max_completion_length": MAX_COMPLETION_LENGTH,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
    }
    config = {**defaults, **config}
    trainer = object.__new__(GRPOTrainer)
    model = _Policy()
    model.train()
    attributes = {
        "model": model,
        "accelerator": Accelerator(cpu=True),
        "args": SimpleNamespace(
            use_bias_correction_kl=False,
            delta=None,
            steps_per_generation=config["steps_per_generation"],
            gradient_accumulation_steps=config["gradient_accumulation_steps"],
            gradient_checkpointing_kwargs=None,
            report_to=[],
            per_device_train_batch_size=GENERATIONS * GROUPS,
            per_device_eval_batch_size=GENERATIONS * GROUPS,
        ),
        "loss_type": config["loss_type"],
        "scale_rewards": config["scale_rewards"],
        "beta": config["beta"],
        "epsilon_low": config["epsilon"],
        "epsilon_high": config["epsilon_high"] or config["epsilon"],
        "num_generations": config["num_generations"],
        "num_iterations": 1,
        "max_completion_length": config["max_completion_length"],
        "current_gradient_accumulation_steps": config["gradient_accumulation_steps"],
        "multi_objective_aggregation": "sum_then_normalize",
        "importance_sampling_level": "token",
        "off_policy_mask_threshold": None,
        "top_entropy_quantile": 1.0,
        "use_vllm": False,
        "vllm_importance_sampling_correction": False,
        "_entropy_bonus_enabled": False,
        "aux_loss_enabled": False,
        "mask_truncated_completions": False,
        "environment_factories": None,
        "environments": None,
        "tools": None,
        "ref_model": None,
        "pad_to_multiple_of": None,
        "_tokenizer": SimpleNamespace(pad_token_id=PAD),
        "eos_token_ids": [1],
        "log_multimodal": False,
        "state": TrainerState(),
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
        "_logs": {
            "prompt": [],
            "completion": [],
            "rewards": defaultdict(list),
            "advantages": [],
            "extra": defaultdict(list),
        },
        "_pending_extra_logs": defaultdict(list),
        "_pending_metrics": defaultdict(list),
    }
    for name, value in attributes.items():
        setattr(trainer, name, value)
    return trainer


def trl_advantages(rewards_per_function: torch.Tensor, **config: Any) -> torch.Tensor:
    """TRL's advantages for these rewards: its reward functions return the columns given."""
    trainer = trl_trainer(**config)
    count, functions = rewards_per_function.shape

    def column(index: int) -> Any:
        def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[Any]:
            values = rewards_per_function[:, index].tolist()
            return [None if value != value else value for value in values]  # NaN -> None

        reward.__name__ = f"r{index}"
        return reward

    trainer.reward_funcs = [column(i) for i in range(functions)]
    trainer.reward_func_names = [f.__name__ for f in trainer.reward_funcs]
    trainer.reward_processing_classes = [None] * functions
    trainer.reward_weights = torch.tensor(config.get("weights", [1.0] * functions))
    ids = [[5, 6, 1]] * count
    trainer._generate = lambda prompts: (ids, ids, None, ["c"] * count, None, {}, None, [])
    return trainer._generate_and_score_completions([{"prompt": "p"}] * count)["advantages"]


def random_rewards(seed: int, functions: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(GROUPS * GENERATIONS, functions, generator=generator)
    rewards[0, 0] = torch.nan  # one reward returned None here
    rewards[5] = torch.nan  # every reward returned None: unscorable
    rewards[GENERATIONS * 2 : GENERATIONS * 3, 1] = 0.5  # a group with one value in column 1
    return rewards


# Advantages


@pytest.mark.parametrize("scale_rewards", SCALE_REWARDS)
def test_advantages_equal_trls(scale_rewards: str) -> None:
    rewards = random_rewards(0)
    weights = [1.0, 0.5]
    expected = trl_advantages(rewards, scale_rewards=scale_rewards, weights=weights)
    ours = group_advantages(
        rewards,
        torch.tensor(weights),
        num_generations=GENERATIONS,
        scale_rewards=scale_rewards,  # type: ignore[arg-type]
    )
    torch.testing.assert_close(ours.advantages, expected, rtol=0, atol=1e-6)


def test_a_group_of_equal_rewards_has_no_advantage_and_counts_as_zero_spread() -> None:
    rewards = torch.ones(GROUPS * GENERATIONS, 1)
    rewards[:GENERATIONS] = torch.arange(GENERATIONS, dtype=torch.float32).unsqueeze(1)
    expected = trl_advantages(rewards)
    ours = group_advantages(
        rewards, torch.ones(1), num_generations=GENERATIONS, scale_rewards="group"
    )
    torch.testing.assert_close(ours.advantages, expected, rtol=0, atol=1e-6)
    assert ours.advantages[GENERATIONS:].abs().max() == 0
    assert ours.zero_std_share == pytest.approx((GROUPS - 1) / GROUPS)


def test_an_unscorable_completion_gets_no_advantage() -> None:
    ours = group_advantages(
        random_rewards(1), torch.ones(2), num_generations=GENERATIONS, scale_rewards="group"
    )
    assert ours.advantages[5] == 0 and torch.isnan(ours.rewards[5])


# Loss


def random_batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    count = GROUPS * GENERATIONS
    shape = (count, TOKENS)
    logps = -torch.rand(shape, generator=generator) * 3
    mask = torch.ones(shape, dtype=torch.int)
    lengths = torch.randint(1, TOKENS + 1, (count,), generator=generator)
    mask[torch.arange(TOKENS).expand(count, -1) >= lengths.unsqueeze(1)] = 0
    return {
        "logps": logps,
        # Old and reference policies off by up to ±0.5 nats: enough for both clip sides.
        "old": logps + (torch.rand(shape, generator=generator) - 0.5),
        "ref": logps + (torch.rand(shape, generator=generator) - 0.5),
        "entropies": torch.rand(shape, generator=generator) * 2,
        "mask": mask,
        # Alternating signs, so both clip sides are met whatever the draw.
        "advantages": torch.randn(count, generator=generator).abs()
        * torch.tensor([1.0, -1.0]).repeat(count // 2),
    }


def trl_loss(batch: dict[str, torch.Tensor], *, with_old: bool, **config: Any) -> tuple[Any, ...]:
    """TRL's loss, its gradient with respect to the policy log-probs, and its metrics."""
    trainer = trl_trainer(**config)
    logps = batch["logps"].clone().requires_grad_(True)
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (
        logps,
        batch["entropies"],
        None,
    )
    count = logps.size(0)
    inputs = {
        "prompt_ids": torch.ones(count, 2, dtype=torch.long),
        "prompt_mask": torch.ones(count, 2, dtype=torch.long),
        "completion_ids": torch.ones(count, TOKENS, dtype=torch.long),
        "completion_mask": batch["mask"],
        "advantages": batch["advantages"],
        "num_items_in_batch": batch["mask"].sum() * config.get("steps_per_generation", 1),
        "ref_per_token_logps": batch["ref"],
    }
    if with_old:
        inputs["old_per_token_logps"] = batch["old"]
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), logps.grad, trainer._metrics["train"]


def our_loss(batch: dict[str, torch.Tensor], *, with_old: bool, **config: Any) -> tuple[Any, ...]:
    logps = batch["logps"].clone().requires_grad_(True)
    accumulation = config.get("gradient_accumulation_steps", 1)
    settings = GrpoLossSettings(
        loss_type=config.get("loss_type", "dapo"),
        epsilon=config.get("epsilon", 0.2),
        epsilon_high=config.get("epsilon_high"),
        beta=config.get("beta", 0.0),
        max_completion_length=MAX_COMPLETION_LENGTH,
    )
    out = grpo_loss(
        logps,
        batch["mask"],
        batch["advantages"],
        settings,
        old_per_token_logps=batch["old"] if with_old else None,
        ref_per_token_logps=batch["ref"],
        entropies=batch["entropies"],
        accumulation_steps=accumulation,
        # The micro-batch's tokens times the micro-batches of a step: what TRL rescales
        # num_items_in_batch (the generation batch's tokens) to.
        tokens_in_step=batch["mask"].sum() * accumulation,
    )
    out.loss.backward()
    return out.loss.detach(), logps.grad, out


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("with_old", [True, False], ids=["old-logps", "on-policy"])
def test_loss_gradient_and_metrics_equal_trls(loss_type: str, beta: float, with_old: bool) -> None:
    batch = random_batch(LOSS_TYPES.index(loss_type) * 4 + int(beta > 0) * 2 + with_old)
    config = {
        "loss_type": loss_type,
        "beta": beta,
        "epsilon_high": 0.28,
        "gradient_accumulation_steps": 2,
        "steps_per_generation": 2,
    }
    trl_value, trl_grad, metrics = trl_loss(batch, with_old=with_old, **config)
    value, grad, out = our_loss(batch, with_old=with_old, **config)
    torch.testing.assert_close(value, trl_value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-6, atol=1e-8)
    ours = {
        "clip_ratio/low_mean": out.clip_low,
        "clip_ratio/high_mean": out.clip_high,
        "clip_ratio/region_mean": out.clip_region,
        "clip_ratio/low_min": out.clip_low_min,
        "clip_ratio/high_max": out.clip_high_max,
        "entropy": out.entropy,
    }
    if beta:
        ours["kl"] = out.kl
    else:
        assert out.kl is None and "kl" not in metrics
    for name, tensor in ours.items():
        assert tensor is not None
        assert tensor.item() == pytest.approx(metrics[name][-1], rel=1e-6, abs=1e-7), name
    if with_old:  # ±0.5 nats against epsilon 0.2/0.28 must clip on both sides
        assert out.clip_low.item() > 0 and out.clip_high.item() > 0


def test_the_on_policy_ratio_is_one_so_nothing_clips() -> None:
    _, _, out = our_loss(random_batch(3), with_old=False, loss_type="grpo")
    assert out.clip_region.item() == 0


def test_beta_without_the_reference_is_refused() -> None:
    batch = random_batch(4)
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(
            batch["logps"],
            batch["mask"],
            batch["advantages"],
            GrpoLossSettings(loss_type="grpo", beta=0.1),
        )


def test_dapo_without_the_step_token_count_is_refused() -> None:
    batch = random_batch(5)
    with pytest.raises(ValueError, match="tokens_in_step"):
        grpo_loss(batch["logps"], batch["mask"], batch["advantages"], GrpoLossSettings())


# Completion mask


def test_the_mask_keeps_the_first_eos_and_drops_what_follows() -> None:
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 5, 5, 5, 5], [5, 9, 6, 7, 9]])
    mask = completion_mask(ids, eos_token_ids=[2, 9])
    assert mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
    ]


# Rewards


def test_rewards_and_their_arguments_equal_trls(tmp_path: Path) -> None:
    """The same reward functions give TRL's rewards_per_func, called with TRL's arguments."""
    seen: dict[str, set[str]] = {}
    source = tmp_path / "my_rewards.py"
    source.write_text(
        "def half(prompts, completions, answer, **kwargs):\n"
        "    return [None if a == 'skip' else 0.5 for a in answer]\n"
    )
    specs = [
        RewardSpec(builtin="exact_match", column="answer"),
        RewardSpec(builtin="length_penalty", max_tokens=2),
        RewardSpec(file=str(source), function="half", weight=2.0),
    ]
    rewards = load_rewards(specs)

    def keys(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        seen.setdefault("run", set()).update(kwargs)
        return [0.0] * len(completions)

    functions = [reward.function for reward in rewards] + [keys]
    answers = ["yes", "no", "skip", "yes"]
    completions = ["yes", "yes.", "no", " yes "]
    ids = [[1], [1, 2, 3], [1, 2, 3, 4, 5], [1, 2]]
    trainer = trl_trainer(num_generations=2)
    trainer.reward_funcs = functions
    trainer.reward_func_names = [f.__name__ for f in functions]
    trainer.reward_processing_classes = [None] * len(functions)
    inputs = [{"prompt": "p", "answer": answer} for answer in answers]
    expected = trainer._calculate_rewards(inputs, ["p"] * 4, completions, ids)
    trl_keys = seen.pop("run")
    ours = score_completions(
        [*rewards, Reward("keys", keys, 1.0, "built-in")],
        prompts=["p"] * 4,
        completions=completions,
        completion_ids=ids,
        columns={"answer": answers},
        rows=[1, 1, 2, 2],
        num_generations=2,
        on_error="stop",
    )
    torch.testing.assert_close(ours.per_function, expected, rtol=0, atol=0, equal_nan=True)
    assert seen["run"] == trl_keys

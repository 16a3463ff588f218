"""GrpoTask on a real tiny Llama: sampling, scoring and the loss, held to grpo_loss computed
independently (naive full-logits log-probs) on the same completions, and the gradient of the
policy's weights to the same loss's."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from engine.core.errors import ConfigError
from engine.data.prepare_prompts import PromptExample
from engine.runs.control import RunAborted
from engine.train.tasks.grpo import GrpoSettings, GrpoTask, check_settings
from engine.train.tasks.grpo_loss import (
    GrpoLossSettings,
    completion_mask,
    group_advantages,
    grpo_loss,
)
from engine.train.tasks.rewards import Reward, RewardError
from tests.conftest import micro_llama_config

VOCAB, PAD, EOS = 13, 0, 2


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    net = LlamaForCausalLM(micro_llama_config(VOCAB, pad_token_id=PAD, eos_token_id=EOS))
    return net.train()


def prompts() -> list[PromptExample]:
    return [
        PromptExample([5, 6, 7], 1, "a", {"answer": "3"}),
        PromptExample([8, 9], 2, "b", {"answer": "4"}),
    ]


def count_threes(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    # A reward with a spread on random completions: how often token text "3" appears.
    return [float(text.count("3")) for text in completions]


def decode(ids: list[int]) -> str:
    return " ".join(str(i) for i in ids)


def task(loss_type: str = "dapo", **settings: Any) -> GrpoTask:
    loss = GrpoLossSettings(loss_type=loss_type, max_completion_length=6)  # type: ignore[arg-type]
    return GrpoTask(
        GrpoSettings(loss=loss, num_generations=4, **settings),
        [Reward("count_threes", count_threes, 1.0, "built-in")],
        eos_token_ids=[EOS],
        decode=decode,
    )


def naive_logps(net: Any, rows: list[list[int]], prompt_lengths: list[int], width: int) -> Any:
    """[completions, width] log-probs of each completion's tokens from the full logits."""
    out = torch.zeros(len(rows), width)
    for index, (row, start) in enumerate(zip(rows, prompt_lengths, strict=True)):
        logits = net(torch.tensor([row])).logits[0, :-1]
        logps = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(row[1:])[:, None])[
            :, 0
        ]
        part = logps[start - 1 :]
        out[index, : part.numel()] = part
    return out


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("chunked", [True, False])
def test_loss_metrics_and_gradient_equal_grpo_loss_on_the_same_completions(
    loss_type: str, chunked: bool
) -> None:
    net, grpo = model(), task(loss_type)
    examples = prompts()
    batch = grpo.collate(examples, PAD, "cpu")
    torch.manual_seed(1)
    rollout = grpo.sample(net, examples, PAD, "cpu")
    assert net.training  # sampling puts the model back in training mode
    assert rollout.completion_ids.shape[0] == 8
    torch.manual_seed(1)
    loss = grpo.loss_sum(net, batch, None, "cpu", chunked) / grpo.trained_token_count(examples)
    loss.backward()
    ours = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    metrics = {key: float(total / count) for key, (total, count) in grpo.take_metrics().items()}

    # Independently: the same completions, the reward by hand, TRL's arithmetic.
    reference = copy.deepcopy(net)
    reference.zero_grad(set_to_none=True)
    mask = completion_mask(rollout.completion_ids, [EOS])
    lengths = mask.sum(1).tolist()
    kept = [row[:n] for row, n in zip(rollout.completion_ids.tolist(), lengths, strict=True)]
    starts = [len(examples[i // 4].prompt_ids) for i in range(8)]
    rows = [examples[i // 4].prompt_ids + kept[i] for i in range(8)]
    width = rollout.completion_ids.shape[1]
    rewards = torch.tensor([[float(decode(ids).count("3"))] for ids in kept])
    advantages = group_advantages(rewards, torch.ones(1), num_generations=4, scale_rewards="group")
    token_logps = naive_logps(reference, rows, starts, width)
    expected = grpo_loss(
        token_logps,
        mask,
        advantages.advantages,
        grpo.settings.loss,
        tokens_in_step=mask.sum(),
    )
    assert loss.item() == pytest.approx(expected.loss.item(), abs=1e-6)
    expected.loss.backward()
    assert any(grad.abs().sum() > 0 for grad in ours.values())  # the rewards had a spread
    for name, grad in ours.items():
        other = dict(reference.named_parameters())[name].grad
        assert torch.allclose(grad, other, atol=1e-6), name
    assert metrics["reward"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert metrics["rewards/count_threes/mean"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert metrics["completions/mean_length"] == pytest.approx(sum(lengths) / 8)
    assert metrics["clip_ratio/region_mean"] == 0.0  # one iteration: the ratio is 1
    assert "kl" not in metrics  # beta 0


def test_beta_scores_the_reference_with_the_adapter_off() -> None:
    from peft import LoraConfig, get_peft_model

    net = get_peft_model(
        model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    grpo = task("dapo")
    grpo.settings = GrpoSettings(
        loss=GrpoLossSettings(beta=0.5, max_completion_length=6), num_generations=4
    )
    loss = grpo.loss_sum(net, grpo.collate(prompts(), PAD, "cpu"), None, "cpu", False)
    assert torch.isfinite(loss)
    metrics = grpo.take_metrics()
    assert float(metrics["kl"][0] / metrics["kl"][1]) > 0  # the adapter moved the policy


def test_full_fine_tuning_with_beta_is_refused_clearly() -> None:
    settings = GrpoSettings(loss=GrpoLossSettings(beta=0.1), num_generations=2)
    with pytest.raises(ConfigError, match="beta"):
        check_settings(settings, uses_adapter=False)
    check_settings(settings, uses_adapter=True)
    with pytest.raises(ConfigError, match="FSDP"):
        check_settings(settings, uses_adapter=True, sharded=True)


def test_a_stop_during_generation_ends_the_step() -> None:
    grpo = task()
    grpo.should_stop = lambda: True
    with pytest.raises(RunAborted):
        grpo.loss_sum(model(), grpo.collate(prompts(), PAD, "cpu"), None, "cpu", True)


def test_a_reward_that_raises_names_its_row_and_skip_group_leaves_the_group_out() -> None:
    def broken(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        if "b" in prompts:
            raise KeyError("boom")
        return [1.0] * len(completions)

    warnings: list[str] = []
    grpo = task()
    grpo.warn = warnings.append
    grpo.rewards = [Reward("broken", broken, 1.0, "/tmp/my_rewards.py")]
    batch = grpo.collate(prompts(), PAD, "cpu")
    with pytest.raises(RewardError, match=r"my_rewards.py.*row 2"):
        grpo.loss_sum(model(), batch, None, "cpu", True)
    grpo.settings = GrpoSettings(
        loss=grpo.settings.loss, num_generations=4, on_reward_error="skip_group"
    )
    loss = grpo.loss_sum(model(), batch, None, "cpu", True)
    assert loss.item() == 0.0  # group 1: equal rewards, group 2: skipped; no advantage
    assert len(warnings) == 1 and "row 2" in warnings[0] and "left out" in warnings[0]

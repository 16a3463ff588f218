"""PreferenceTask and KtoTask on a real tiny Llama against TRL 1.16's DPOTrainer and
KTOTrainer on the same batch.

TRL's side: its DPOTrainer._compute_loss (a trainer made with object.__new__, as in
test_preference_loss.py), calling the policy and a separate reference model that carry TRL's
fused LM head. Ours: the reference's totals from pair_log_probs (the starting weights), then
PreferenceTask.collate and loss_sum on the policy, as the training loop runs them. Loss,
metrics and every weight's gradient must agree.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head

from engine.config.preference import PreferenceSection
from engine.data.encode import EncodedExample
from engine.data.prepare_preference import EncodedPair, EncodedUnpaired
from engine.speed.loss import IGNORE
from engine.train.tasks.kto import KtoTask
from engine.train.tasks.pair_scores import pair_log_probs
from engine.train.tasks.preference import PreferenceTask
from engine.train.tasks.preference_loss import PreferenceLossSettings, kl_completion_order
from tests.conftest import micro_llama_config
from tests.engine.train.tasks.test_preference_loss import dpo_trainer, kto_trainer

VOCAB, PAD = 17, 0
# (prompt tokens, response tokens) of each side of each pair: unequal, so rows are padded.
SHAPES = [((3, 4), (3, 2)), ((5, 1), (5, 3)), ((2, 3), (2, 3))]


def side(generator: torch.Generator, prompt: list[int], response: int) -> EncodedExample:
    answer = torch.randint(1, VOCAB, (response,), generator=generator).tolist()
    return EncodedExample(
        input_ids=prompt + answer, labels=[IGNORE] * len(prompt) + answer, num_trained=response
    )


def pairs() -> list[EncodedPair]:
    generator = torch.Generator().manual_seed(5)
    out = []
    for row, ((prompt_len, chosen_len), (_, rejected_len)) in enumerate(SHAPES, start=1):
        prompt = torch.randint(1, VOCAB, (prompt_len,), generator=generator).tolist()
        out.append(
            EncodedPair(
                side(generator, prompt, chosen_len), side(generator, prompt, rejected_len), row
            )
        )
    return out


def models(frozen_head: bool) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """(reference, policy): the policy is the reference moved a little, as after some steps."""
    torch.manual_seed(0)
    reference = LlamaForCausalLM(micro_llama_config(VOCAB, pad_token_id=PAD))
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    policy.lm_head.requires_grad_(not frozen_head)
    return reference, policy


def our_step(
    task: Any, reference: Any, policy: Any, examples: list[Any], chunked: bool, ld_alpha: Any
) -> tuple[torch.Tensor, dict[str, Any], dict[str, Any]]:
    """What the run does with ``examples``: the reference's totals scored first, then the
    task's mean loss on the policy (backpropagated), its metrics, and the batch."""
    totals = pair_log_probs(
        reference,
        examples,
        batch_size=2,
        pad_token_id=PAD,
        device="cpu",
        amp_dtype=None,
        chunked=chunked,
        ld_alpha=ld_alpha,
    )
    assert totals is not None
    examples = [
        dataclasses.replace(ex, reference=total) for ex, total in zip(examples, totals, strict=True)
    ]
    batch = task.collate(examples, PAD, "cpu")
    loss = task.loss_sum(policy, batch, None, "cpu", chunked) / len(examples)
    sums = task.take_metrics()
    loss.backward()
    return loss, sums, batch


def trl_copies(policy: Any, reference: Any) -> tuple[Any, Any]:
    """Copies of the two models with TRL's fused LM head (every output its trainers read),
    the policy's gradients not copied."""
    copies = copy.deepcopy(policy), copy.deepcopy(reference)
    copies[0].zero_grad(set_to_none=True)
    for model in copies:
        add_fused_lm_head(
            model, outputs=("log_probs", "log_sum_sq_probs", "entropy", "mean_logits", "is_top1")
        )
    return copies


def trl_batch(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Our collated batch as TRL's collator gives it: the completion mask unshifted."""
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": mask,
        "completion_mask": (batch["labels"] != IGNORE).long(),
    }


@pytest.mark.parametrize("frozen_head", [True, False])
@pytest.mark.parametrize(
    "values", [{}, {"loss_type": "ipo", "beta": 0.3}, {"ld_alpha": 0.5}, {"use_weighting": True}]
)
@pytest.mark.parametrize("chunked", [True, False])
def test_loss_sum_equals_trls_dpo_trainer(
    values: dict[str, Any], frozen_head: bool, chunked: bool
) -> None:
    settings = PreferenceLossSettings.from_section(PreferenceSection(**values), "dpo")
    reference, policy = models(frozen_head)
    examples = pairs()
    ours, sums, batch = our_step(
        PreferenceTask(settings), reference, policy, examples, chunked, settings.ld_alpha
    )

    trl_policy, trl_reference = trl_copies(policy, reference)
    trainer = dpo_trainer(settings, trl_policy, trl_reference)
    theirs = trainer._compute_loss(trl_policy, trl_batch(batch), return_outputs=False)
    theirs.backward()

    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    logged = trainer._metrics["train"]
    for key, (total, count) in sums.items():
        assert count == len(SHAPES)
        assert float(total) / count == pytest.approx(logged[key][-1], rel=1e-5, abs=1e-6), key
    for (name, mine), trl in zip(policy.named_parameters(), trl_policy.parameters(), strict=True):
        assert (mine.grad is None) == (trl.grad is None), name
        if mine.grad is not None:
            torch.testing.assert_close(mine.grad, trl.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_eval_passes_leave_the_step_metrics_alone() -> None:
    # The loop's evaluation runs loss_sum without gradients: its pairs are no step's.
    _, policy = models(frozen_head=True)
    task = PreferenceTask(PreferenceLossSettings.from_section(PreferenceSection(), "simpo"))
    batch = task.collate(pairs(), PAD, "cpu")
    with torch.no_grad():
        task.loss_sum(policy, batch, None, "cpu", True)
    assert task.take_metrics() == {}
    task.loss_sum(policy, batch, None, "cpu", True)
    sums = task.take_metrics()
    assert sums["rewards/margins"][1] == 3


def test_dpo_without_reference_log_probs_is_refused() -> None:
    _, policy = models(frozen_head=True)
    task = PreferenceTask(PreferenceLossSettings.from_section(PreferenceSection(), "dpo"))
    with pytest.raises(ValueError, match="reference log-probs"):
        task.loss_sum(policy, task.collate(pairs(), PAD, "cpu"), None, "cpu", True)


def kto_examples(desirable: list[bool]) -> list[EncodedUnpaired]:
    """KTO examples from the pairs' sequences: each completion with its KL sequence, the
    prompt with the previous example's completion (TRL's rotation, kl_completion_order)."""
    base = pairs()
    completions = [pair.chosen for pair in base]
    order = kl_completion_order(len(base))
    out = []
    for i, pair in enumerate(base):
        prompt = [
            token
            for token, label in zip(pair.chosen.input_ids, pair.chosen.labels, strict=True)
            if label == IGNORE
        ]
        other = completions[order[i]]
        answer = [label for label in other.labels if label != IGNORE]
        kl = EncodedExample(
            prompt + answer, [IGNORE] * len(prompt) + answer, num_trained=len(answer)
        )
        out.append(EncodedUnpaired(pair.chosen, kl, desirable[i], pair.row))
    return out


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("desirable", [[True, False, True], [False, False, False]])
def test_kto_loss_sum_equals_trls_kto_trainer(loss_type: str, desirable: list[bool]) -> None:
    section = PreferenceSection(loss_type=loss_type, beta=0.3, desirable_weight=1.2)
    settings = PreferenceLossSettings.from_section(section, "kto")
    reference, policy = models(frozen_head=True)
    examples = kto_examples(desirable)
    ours, sums, batch = our_step(KtoTask(settings), reference, policy, examples, True, None)

    trl_policy, trl_reference = trl_copies(policy, reference)
    trainer = kto_trainer(settings, trl_policy, trl_reference)
    whole, count = trl_batch(batch), len(examples)
    inputs = {key: value[:count] for key, value in whole.items()}
    inputs.update({f"KL_{key}": value[count:] for key, value in whole.items()})
    inputs["label"] = torch.tensor(desirable)
    theirs = trainer._compute_loss(trl_policy, inputs, return_outputs=False)
    theirs.backward()

    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    logged = trainer._metrics["train"]
    for key, (total, weight) in sums.items():
        if weight:
            assert float(total) / weight == pytest.approx(logged[key][-1], rel=1e-5, abs=1e-6), key
        else:
            assert key not in logged, key
    for (name, mine), trl in zip(policy.named_parameters(), trl_policy.parameters(), strict=True):
        if mine.grad is not None:
            torch.testing.assert_close(mine.grad, trl.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_orpo_scores_the_whole_chosen_sequence_and_marks_its_response() -> None:
    # TRL's ORPO NLL covers the chosen sequence's prompt too: every real token is a label there,
    # padding none; the response's positions are kept apart for the odds ratio.
    examples = pairs()
    task = PreferenceTask(PreferenceLossSettings.from_section(PreferenceSection(), "orpo"))
    batch = task.collate(examples, PAD, "cpu")
    plain = PreferenceTask(PreferenceLossSettings.from_section(PreferenceSection(), "simpo"))
    labels = plain.collate(examples, PAD, "cpu")["labels"]
    count = len(examples)
    for row, pair in enumerate(examples):
        length = len(pair.chosen.input_ids)
        assert batch["labels"][row, :length].tolist() == pair.chosen.input_ids
        assert (batch["labels"][row, length:] == IGNORE).all()
    assert torch.equal(batch["labels"][count:], labels[count:])
    assert torch.equal(batch["response"], labels[:count, 1:] != IGNORE)

"""DPO, SimPO, ORPO and KTO's arithmetic against TRL 1.16's own trainers, on the same logits.

TRL keeps these losses inside trainer methods (DPOTrainer._compute_loss, KTOTrainer.
_compute_loss, CPOTrainer and ORPOTrainer.get_batch_loss_metrics) of trainers whose
``__init__`` loads a model and a whole training setup. The trainers here are made with
``object.__new__`` and given only the attributes those methods read; the "model" they call is a
module that turns one fixed random logits tensor into what TRL asks of it (the fused head's
per-token log-probs for DPO and KTO, plain logits for CPO and ORPO). Our side scores the same
logits with engine.speed.sequence_logps and computes the loss with engine.train.tasks.
preference_loss. Values, gradients with respect to the logits, and metrics must agree.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from trl import DPOTrainer, KTOTrainer

from engine.config.preference import DPO_LOSS_TYPES, PreferenceSection
from engine.speed.loss import IGNORE
from engine.speed.sequence_logps import SequenceLogps, response_logps
from engine.train.tasks.preference_loss import (
    PAIR_METRICS,
    PreferenceLossSettings,
    dpo_loss,
    kl_completion_order,
    kto_loss,
    mean_nll,
    pair_loss,
    pair_totals,
)

PAIRS, TOKENS, VOCAB, PAD = 4, 10, 13, 0
RTOL, ATOL = 1e-6, 1e-9
# (prompt length, end) of each row: responses of different lengths, right padding.
CHOSEN_ROWS = [(3, 10), (2, 7), (4, 9), (1, 6)]
REJECTED_ROWS = [(3, 8), (2, 10), (4, 6), (1, 9)]


class _Logits(torch.nn.Module):
    """Stands in for a causal LM: whatever it is asked, the answer comes from ``logits``
    (looked up by the identity of the input_ids tensor, so one module serves several
    batches), as TRL's fused head would compute it from real logits."""

    is_gradient_checkpointing = False

    def __init__(self, by_input: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.by_input = by_input

    def forward(self, input_ids=None, labels=None, fused_lm_head=False, **_: Any):
        logits = self.by_input[id(input_ids)]
        if not fused_lm_head:
            return SimpleNamespace(logits=logits)
        logps = F.log_softmax(logits[:, :-1], dim=-1)
        targets = labels[:, 1:]
        mask = targets != IGNORE
        token = logps.gather(2, targets.clamp(min=0)[..., None]).squeeze(2) * mask
        return SimpleNamespace(
            log_probs=token,
            log_sum_sq_probs=torch.logsumexp(2 * logps, dim=-1) * mask,
            entropy=torch.zeros_like(token),
            mean_logits=torch.zeros_like(token),
            is_top1=torch.zeros_like(mask),
        )


def rows(spec: list[tuple[int, int]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (len(spec), TOKENS), generator=generator)
    attention = torch.zeros(len(spec), TOKENS, dtype=torch.long)
    completion = torch.zeros_like(attention)
    for row, (prompt, end) in enumerate(spec):
        attention[row, :end] = 1
        completion[row, prompt:end] = 1
        input_ids[row, end:] = PAD
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


def logits_for(count: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (
        2 * torch.randn(count, TOKENS, VOCAB, generator=generator, dtype=dtype)
    ).requires_grad_()


def labels_of(batch: dict[str, torch.Tensor], mask_key: str = "completion_mask") -> torch.Tensor:
    return batch["input_ids"].masked_fill(batch[mask_key] == 0, IGNORE)


def ours(logits: torch.Tensor, labels: torch.Tensor, squares: bool = False) -> SequenceLogps:
    return response_logps(
        logits, torch.nn.Identity(), labels, rows=7, with_log_sum_sq_probs=squares
    )


def assert_metrics(got: dict[str, torch.Tensor], want: dict[str, Any]) -> None:
    for key, value in got.items():
        expected = want[key][-1] if isinstance(want[key], list) else want[key]
        assert float(value) == pytest.approx(float(expected), rel=1e-6, abs=1e-9), key


# -- DPO ---------------------------------------------------------------------------------------
def ref_trainer(trainer_class: type, policy, reference, **attributes: Any) -> Any:
    """A DPO or KTO trainer with a separate reference model, computing in train mode."""
    trainer = object.__new__(trainer_class)
    policy.train()
    trainer.__dict__.update(
        model=policy,
        ref_model=reference,
        accelerator=Accelerator(cpu=True),
        aux_loss_enabled=False,
        precompute_ref_logps=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        **attributes,
    )
    return trainer


def dpo_trainer(settings: PreferenceLossSettings, policy, reference) -> DPOTrainer:
    return ref_trainer(
        DPOTrainer,
        policy,
        reference,
        args=SimpleNamespace(
            discopop_tau=settings.discopop_tau, gradient_checkpointing_kwargs=None
        ),
        loss_types=list(settings.loss_types),
        loss_weights=list(settings.loss_weights),
        beta=settings.beta,
        label_smoothing=settings.label_smoothing,
        f_divergence_type=settings.f_divergence_type,
        f_alpha_divergence_coef=settings.f_alpha_divergence_coef,
        ld_alpha=settings.ld_alpha,
        use_weighting=settings.use_weighting,
    )


def run_dpo(
    settings: PreferenceLossSettings,
    dtype: torch.dtype = torch.float64,
    rtol: float = RTOL,
    atol: float = ATOL,
    trl_backward: bool = True,
) -> None:
    chosen, rejected = rows(CHOSEN_ROWS, 1), rows(REJECTED_ROWS, 2)
    batch = {key: torch.cat([chosen[key], rejected[key]]) for key in chosen}
    policy_logits = logits_for(2 * PAIRS, 3, dtype)
    reference_logits = logits_for(2 * PAIRS, 4, dtype).detach()
    policy = _Logits({id(batch["input_ids"]): policy_logits})
    reference = _Logits({id(batch["input_ids"]): reference_logits})
    trainer = dpo_trainer(settings, policy, reference)
    trl_loss = trainer._compute_loss(policy, batch, return_outputs=False)
    if trl_backward:
        (trl_grad,) = torch.autograd.grad(trl_loss, policy_logits)
    else:
        with pytest.raises(RuntimeError, match="inplace operation"):
            torch.autograd.grad(trl_loss, policy_logits)

    labels = labels_of(batch)
    squares = settings.use_weighting
    policy_c = ours(policy_logits[:PAIRS], labels[:PAIRS], squares)
    policy_r = ours(policy_logits[PAIRS:], labels[PAIRS:], squares)
    ref = pair_totals(
        ours(reference_logits[:PAIRS], labels[:PAIRS]),
        ours(reference_logits[PAIRS:], labels[PAIRS:]),
        settings.ld_alpha,
    )
    result = pair_loss(settings, policy_c, policy_r, reference=ref)
    (grad,) = torch.autograd.grad(result.loss, policy_logits)
    torch.testing.assert_close(result.loss, trl_loss, rtol=rtol, atol=atol)
    if trl_backward:
        torch.testing.assert_close(grad, trl_grad, rtol=rtol, atol=atol)
    else:
        assert grad.isfinite().all() and grad.abs().sum() > 0
    assert_metrics(result.metrics, trainer._metrics["train"])
    assert set(result.metrics) == set(PAIR_METRICS)


def kto_trainer(settings: PreferenceLossSettings, policy, reference) -> KTOTrainer:
    loss_type = settings.loss_types[0]
    return ref_trainer(
        KTOTrainer,
        policy,
        reference,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        calculate_KL=loss_type != "apo_zero_unpaired",
        loss_type=loss_type,
        beta=settings.beta,
        desirable_weight=settings.desirable_weight,
        undesirable_weight=settings.undesirable_weight,
    )


def dpo(**values: Any) -> PreferenceLossSettings:
    section = PreferenceSection(**values)
    assert not section.problems("dpo"), section.problems("dpo")
    return PreferenceLossSettings.from_section(section, "dpo")


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_every_dpo_loss_type_equals_trls(loss_type: str) -> None:
    smoothing = {"robust": 0.1, "exo_pair": 1e-3, "aot": 0.05, "aot_unpaired": 0.05}
    run_dpo(dpo(loss_type=loss_type, beta=0.3, label_smoothing=smoothing.get(loss_type, 0.0)))


@pytest.mark.parametrize(
    "values",
    [
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.4]},  # RPO
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},  # MPO
        {"ld_alpha": 0.3},
        {"ld_alpha": 0.0, "loss_type": "ipo"},
        {"use_weighting": True},
        # Not hinge: TRL 1.16 scales relu's output in place, so its own backward fails there.
        {"use_weighting": True, "loss_type": "sigmoid_norm", "ld_alpha": 0.5},
        {"f_divergence_type": "forward_kl"},
        {"f_divergence_type": "js_divergence", "loss_type": "sigmoid_norm"},
        {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 1.0},
        {"loss_type": "discopop", "discopop_tau": 0.2},
    ],
)
def test_dpo_options_equal_trls(values: dict[str, Any]) -> None:
    run_dpo(dpo(**values))


def test_dpo_alpha_divergence_equals_trls_in_float32() -> None:
    # TRL's exponent clamp knows fp16, bf16 and fp32 only.
    settings = dpo(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3)
    run_dpo(settings, torch.float32, rtol=1e-5, atol=1e-7)


def test_alpha_divergence_in_float64_where_trl_has_no_clamp() -> None:
    # TRL 1.16 raises KeyError for float64 (its clamp table stops at float32); ours runs, and
    # agrees with the float32 computation.
    chosen, rejected = rows(CHOSEN_ROWS, 1), rows(REJECTED_ROWS, 2)
    labels = torch.cat([labels_of(chosen), labels_of(rejected)])
    settings = dpo(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3)
    losses = []
    for dtype in (torch.float64, torch.float32):
        logits = logits_for(2 * PAIRS, 3).detach().to(dtype)
        ref = logits_for(2 * PAIRS, 4).detach().to(dtype)
        reference = (
            ours(ref[:PAIRS], labels[:PAIRS]).total,
            ours(ref[PAIRS:], labels[PAIRS:]).total,
        )
        c, r = ours(logits[:PAIRS], labels[:PAIRS]), ours(logits[PAIRS:], labels[PAIRS:])
        losses.append(float(dpo_loss(settings, c, r, reference).loss))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_hinge_with_weighting_backpropagates_where_trls_does_not() -> None:
    # TRL 1.16 multiplies relu's output by the WPO weights in place: its value is right (and
    # ours equals it) but its backward raises. Ours computes the product out of place.
    run_dpo(dpo(loss_type="hinge", use_weighting=True, ld_alpha=0.5), trl_backward=False)


def test_reference_free_compares_with_zero_log_probs() -> None:
    chosen, rejected = rows(CHOSEN_ROWS, 1), rows(REJECTED_ROWS, 2)
    logits = logits_for(2 * PAIRS, 3)
    labels = torch.cat([labels_of(chosen), labels_of(rejected)])
    c, r = ours(logits[:PAIRS], labels[:PAIRS]), ours(logits[PAIRS:], labels[PAIRS:])
    free = dpo_loss(dpo(reference_free=True), c, r, None)
    zero = dpo_loss(dpo(), c, r, (torch.zeros(PAIRS), torch.zeros(PAIRS)))
    torch.testing.assert_close(free.loss, zero.loss)
    expected = 0.1 * float(c.total.detach().mean())
    assert float(free.metrics["rewards/chosen"]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="reference_free"):
        dpo_loss(dpo(), c, r, None)


def test_weighting_without_the_squares_is_refused() -> None:
    c = ours(logits_for(PAIRS, 3), labels_of(rows(CHOSEN_ROWS, 1)))
    with pytest.raises(ValueError, match="with_log_sum_sq_probs"):
        dpo_loss(dpo(use_weighting=True), c, c, (c.total, c.total))


# -- SimPO and ORPO (TRL's CPOTrainer and ORPOTrainer) ----------------------------------------
def cpo_batch(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    chosen, rejected = rows(CHOSEN_ROWS, seed + 1), rows(REJECTED_ROWS, seed + 2)
    batch = {}
    for side, data in (("chosen", chosen), ("rejected", rejected)):
        batch[f"{side}_input_ids"] = data["input_ids"]
        batch[f"{side}_attention_mask"] = data["attention_mask"]
        batch[f"{side}_labels"] = labels_of(data)
    return batch, {key: torch.cat([chosen[key], rejected[key]]) for key in chosen}


def concatenated_model(logits: torch.Tensor) -> torch.nn.Module:
    class _Concatenated(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=False):
            assert input_ids.shape == logits.shape[:2]
            return SimpleNamespace(logits=logits)

    return _Concatenated()


def cpo_like(trainer_class: type, **attributes: Any) -> Any:
    trainer = object.__new__(trainer_class)
    trainer.__dict__.update(
        accelerator=Accelerator(cpu=True),
        is_encoder_decoder=False,
        pad_token_id=PAD,
        padding_value=PAD,
        label_pad_token_id=IGNORE,
        aux_loss_enabled=False,
        **attributes,
    )
    return trainer


@pytest.mark.parametrize(
    "values",
    [{}, {"cpo_alpha": 1.0}, {"label_smoothing": 0.1, "simpo_gamma": 1.2, "beta": 2.0}],
)
def test_simpo_equals_trls_cpo_trainer(values: dict[str, Any]) -> None:
    from trl.experimental.cpo import CPOTrainer

    settings = PreferenceLossSettings.from_section(PreferenceSection(**values), "simpo")
    batch, flat = cpo_batch()
    logits = logits_for(2 * PAIRS, 5)
    trainer = cpo_like(
        CPOTrainer,
        loss_type="simpo",
        beta=settings.beta,
        label_smoothing=settings.label_smoothing,
        simpo_gamma=settings.simpo_gamma,
        cpo_alpha=settings.cpo_alpha,
        alpha=0.0,
    )
    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(concatenated_model(logits), batch)
    (trl_grad,) = torch.autograd.grad(trl_loss, logits)
    labels = labels_of(flat)
    result = pair_loss(
        settings, ours(logits[:PAIRS], labels[:PAIRS]), ours(logits[PAIRS:], labels[PAIRS:])
    )
    (grad,) = torch.autograd.grad(result.loss, logits)
    torch.testing.assert_close(result.loss, trl_loss, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(grad, trl_grad, rtol=RTOL, atol=ATOL)
    assert_metrics(result.metrics, trl_metrics)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_equals_trls_orpo_trainer(beta: float) -> None:
    from trl.experimental.orpo import ORPOTrainer

    settings = PreferenceLossSettings.from_section(PreferenceSection(beta=beta), "orpo")
    batch, flat = cpo_batch(seed=3)
    # Two rows made confident in their own tokens, so that mean log-probs fall on both sides
    # of log1mexp's -ln 2 branch.
    logits = logits_for(2 * PAIRS, 6).detach()
    for row in (0, 5):
        ids = flat["input_ids"][row]
        logits[row, torch.arange(TOKENS - 1), ids[1:]] += 8.0
    logits.requires_grad_()
    trainer = cpo_like(ORPOTrainer, beta=beta)
    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(concatenated_model(logits), batch)
    (trl_grad,) = torch.autograd.grad(trl_loss, logits)
    labels = labels_of(flat)
    # One pass over the whole chosen sequences gives the NLL and the response's log-probs.
    chosen_all = ours(logits[:PAIRS], labels_of(flat, "attention_mask")[:PAIRS])
    chosen = chosen_all.within(labels[:PAIRS, 1:] != IGNORE)
    result = pair_loss(
        settings,
        chosen,
        ours(logits[PAIRS:], labels[PAIRS:]),
        chosen_nll=mean_nll(chosen_all),
    )
    (grad,) = torch.autograd.grad(result.loss, logits)
    torch.testing.assert_close(result.loss, trl_loss.to(result.loss.dtype), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(grad, trl_grad, rtol=RTOL, atol=ATOL)
    assert_metrics(result.metrics, trl_metrics)
    assert {"nll_loss", "log_odds_ratio", "log_odds_chosen"} <= set(result.metrics)
    means = torch.cat(
        [ours(logits[:PAIRS], labels[:PAIRS]).mean, ours(logits[PAIRS:], labels[PAIRS:]).mean]
    )
    assert (means > -0.6931).any() and (means < -0.6931).any()


# -- KTO ---------------------------------------------------------------------------------------
KTO_ROWS = [(3, 10), (2, 7), (4, 9), (1, 6), (2, 8)]


def kto_batch(desirable: list[bool]) -> dict[str, Any]:
    batch = rows(KTO_ROWS, 7)
    order = kl_completion_order(len(KTO_ROWS))
    # The mismatched pairs: each prompt with the previous row's completion, as TRL's collator.
    kl_spec = [
        (KTO_ROWS[i][0], KTO_ROWS[i][0] + KTO_ROWS[j][1] - KTO_ROWS[j][0])
        for i, j in enumerate(order)
    ]
    kl = rows([(p, min(e, TOKENS)) for p, e in kl_spec], 8)
    batch.update(
        KL_input_ids=kl["input_ids"],
        KL_attention_mask=kl["attention_mask"],
        KL_completion_mask=kl["completion_mask"],
        label=torch.tensor(desirable),
    )
    return batch


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize(
    "desirable",
    [[True, False, True, False, False], [True] * 5, [False] * 5],
    ids=["mixed", "all-desirable", "all-undesirable"],
)
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_kto_equals_trls(
    loss_type: str, desirable: list[bool], weights: tuple[float, float]
) -> None:
    section = PreferenceSection(
        loss_type=loss_type, beta=0.4, desirable_weight=weights[0], undesirable_weight=weights[1]
    )
    settings = PreferenceLossSettings.from_section(section, "kto")
    batch = kto_batch(desirable)
    count = len(KTO_ROWS)
    logits, kl_logits = logits_for(count, 9), logits_for(count, 10).detach()
    ref, ref_kl = logits_for(count, 11).detach(), logits_for(count, 12).detach()
    policy = _Logits({id(batch["input_ids"]): logits, id(batch["KL_input_ids"]): kl_logits})
    reference = _Logits({id(batch["input_ids"]): ref, id(batch["KL_input_ids"]): ref_kl})
    trainer = kto_trainer(settings, policy, reference)
    trl_loss = trainer._compute_loss(policy, batch, return_outputs=False)
    labels, kl_labels = (
        labels_of(batch),
        labels_of(
            {"input_ids": batch["KL_input_ids"], "completion_mask": batch["KL_completion_mask"]}
        ),
    )
    kl = None
    if settings.loss_types == ("kto",):
        kl = (ours(kl_logits, kl_labels).total, ours(ref_kl, kl_labels).total)
    result = kto_loss(
        settings, ours(logits, labels).total, batch["label"], ours(ref, labels).total, kl
    )
    torch.testing.assert_close(result.loss, trl_loss, rtol=RTOL, atol=ATOL)
    (trl_grad,) = torch.autograd.grad(trl_loss, logits)
    (grad,) = torch.autograd.grad(result.loss, logits)
    torch.testing.assert_close(grad, trl_grad, rtol=RTOL, atol=ATOL)
    assert_metrics(result.metrics, trainer._metrics["train"])
    # TRL logs what it can: no chosen metrics without a desirable example, and so on.
    trl_keys = {
        key for key in trainer._metrics["train"] if key.startswith(("rewards", "logps", "kl"))
    }
    assert set(result.metrics) == trl_keys


def test_kl_completion_order_is_trls_rotation() -> None:
    completions = ["a", "b", "c", "d"]
    assert [completions[i] for i in kl_completion_order(4)] == completions[-1:] + completions[:-1]
    assert kl_completion_order(0) == [] and kl_completion_order(1) == [0]


def test_settings_from_the_section() -> None:
    settings = PreferenceLossSettings.from_section(
        PreferenceSection(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.2]), "dpo"
    )
    assert (settings.loss_types, settings.loss_weights) == (("sigmoid", "sft"), (1.0, 0.2))
    assert settings.needs_reference
    assert PreferenceLossSettings.from_section(PreferenceSection(), "kto").loss_types == ("kto",)
    assert not PreferenceLossSettings.from_section(PreferenceSection(), "simpo").needs_reference
    assert not PreferenceLossSettings.from_section(PreferenceSection(), "orpo").needs_reference


def test_pair_loss_asks_for_what_the_task_needs() -> None:
    c = ours(logits_for(PAIRS, 3), labels_of(rows(CHOSEN_ROWS, 1)))
    orpo = PreferenceLossSettings.from_section(PreferenceSection(), "orpo")
    with pytest.raises(ValueError, match="ORPO needs chosen_nll"):
        pair_loss(orpo, c, c)
    kto = PreferenceLossSettings.from_section(PreferenceSection(), "kto")
    with pytest.raises(ValueError, match="kto_loss"):
        pair_loss(kto, c, c)

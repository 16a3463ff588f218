"""engine.speed.sequence_logps computes the naive log_softmax-gather, chunk by chunk.

The reference is the plain way: the full logits, log_softmax over the vocabulary, gather at the
labels, summed over the response. Values and gradients (hidden states and a trainable head)
must match in float64 at rtol 1e-6 and in float32 at a tight tolerance, with chunks smaller
than a sequence so the chunk boundaries fall mid-sequence and mid-response.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.speed.loss import IGNORE
from engine.speed.sequence_logps import SequenceLogps, model_response_logps, response_logps

BATCH, TOKENS, HIDDEN, VOCAB = 4, 11, 8, 37


def batch(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.nn.Linear, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(BATCH, TOKENS, HIDDEN, generator=generator, dtype=dtype)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=True).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(VOCAB, HIDDEN, generator=generator, dtype=dtype))
        head.bias.copy_(torch.randn(VOCAB, generator=generator, dtype=dtype))
    labels = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=generator)
    # Prompts of different lengths, right padding on two rows, one row with no response.
    for row, (prompt, end) in enumerate([(3, TOKENS), (5, 9), (2, 6), (TOKENS, TOKENS)]):
        labels[row, :prompt] = IGNORE
        labels[row, end:] = IGNORE
    return hidden.requires_grad_(), head, labels


def naive(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, cap=None):
    logits = head(hidden)[:, :-1]
    if cap:
        logits = torch.tanh(logits / cap) * cap
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logps = F.log_softmax(logits, dim=-1).gather(2, targets.clamp(min=0)[..., None]).squeeze(2)
    logps = logps * mask
    squares = torch.logsumexp(2 * F.log_softmax(logits, dim=-1), dim=-1) * mask
    return logps, mask, squares.detach()


def grads(total: torch.Tensor, hidden: torch.Tensor, head: torch.nn.Linear) -> list[torch.Tensor]:
    return list(torch.autograd.grad(total, [hidden, head.weight, head.bias]))


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"), [(torch.float64, 1e-6, 1e-10), (torch.float32, 1e-5, 1e-5)]
)
@pytest.mark.parametrize("rows", [1, 5, 4096])
@pytest.mark.parametrize("cap", [None, 3.0])
def test_equals_the_naive_log_softmax_gather(dtype, rtol, atol, rows: int, cap) -> None:
    hidden, head, labels = batch(dtype)
    ours = response_logps(hidden, head, labels, cap=cap, rows=rows, with_log_sum_sq_probs=True)
    token, mask, squares = naive(hidden, head, labels, cap)
    torch.testing.assert_close(ours.token, token, rtol=rtol, atol=atol)
    assert torch.equal(ours.mask, mask)
    torch.testing.assert_close(ours.log_sum_sq_probs, squares, rtol=rtol, atol=atol)
    torch.testing.assert_close(ours.total, token.sum(1), rtol=rtol, atol=atol)
    assert ours.count.tolist() == [8, 4, 4, 0]
    torch.testing.assert_close(
        ours.mean, token.sum(1) / mask.sum(1).clamp(min=1), rtol=rtol, atol=atol
    )
    # Gradients of a mix of sums and means, as DPO and SimPO take them.
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    ours_grads = grads((ours.total * weights).sum() + ours.mean.sum(), hidden, head)
    naive_total = token.sum(1)
    naive_mean = naive_total / mask.sum(1).clamp(min=1)
    for got, want in zip(
        ours_grads,
        grads((naive_total * weights).sum() + naive_mean.sum(), hidden, head),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_within_equals_scoring_only_those_positions() -> None:
    hidden, head, labels = batch(torch.float64)
    everything = torch.randint(0, VOCAB, labels.shape, generator=torch.Generator().manual_seed(1))
    everything[labels != IGNORE] = labels[labels != IGNORE]
    everything[:, 0] = IGNORE
    whole = response_logps(hidden, head, everything, with_log_sum_sq_probs=True)
    part = whole.within(labels[:, 1:] != IGNORE)
    alone = response_logps(hidden, head, labels, with_log_sum_sq_probs=True)
    torch.testing.assert_close(part.token, alone.token, rtol=1e-12, atol=0)
    torch.testing.assert_close(part.log_sum_sq_probs, alone.log_sum_sq_probs, rtol=1e-12, atol=0)
    assert torch.equal(part.mask, alone.mask) and part.count.tolist() == [8, 4, 4, 0]


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"), [(torch.float64, 1e-6, 1e-10), (torch.float32, 1e-5, 1e-5)]
)
@pytest.mark.parametrize("rows", [1, 5, 4096])
@pytest.mark.parametrize("cap", [None, 3.0])
def test_a_frozen_head_gives_the_same_values_and_gradients(dtype, rtol, atol, rows, cap) -> None:
    # LoRA and QLoRA freeze the head: its own path computes the states' gradient in the
    # forward instead of recomputing each chunk's logits.
    hidden, head, labels = batch(dtype)
    head.requires_grad_(False)
    seen: list[int] = []
    head.register_forward_hook(lambda *_: seen.append(1))  # the fused path never calls it
    ours = response_logps(hidden, head, labels, cap=cap, rows=rows, with_log_sum_sq_probs=True)
    assert not seen
    token, mask, squares = naive(hidden, head, labels, cap)
    torch.testing.assert_close(ours.token, token, rtol=rtol, atol=atol)
    torch.testing.assert_close(ours.log_sum_sq_probs, squares, rtol=rtol, atol=atol)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    (got,) = torch.autograd.grad((ours.total * weights).sum() + ours.mean.sum(), hidden)
    naive_total = token.sum(1)
    naive_loss = (naive_total * weights).sum() + (naive_total / mask.sum(1).clamp(min=1)).sum()
    (want,) = torch.autograd.grad(naive_loss, hidden)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_a_frozen_head_without_gradients_wanted() -> None:
    hidden, head, labels = batch(torch.float64)
    head.requires_grad_(False)
    with torch.no_grad():
        ours = response_logps(hidden, head, labels, rows=3)
    token, _, _ = naive(hidden.detach(), head, labels)
    torch.testing.assert_close(ours.token, token, rtol=1e-6, atol=1e-10)
    assert not ours.token.requires_grad


@pytest.mark.parametrize("frozen", [False, True])
def test_bf16_states_are_scored_in_fp32(frozen: bool) -> None:
    hidden, head, labels = batch(torch.bfloat16)
    head.requires_grad_(not frozen)
    ours = response_logps(hidden, head.to(torch.bfloat16), labels, rows=3)
    assert ours.token.dtype == torch.float32
    want, _, _ = naive(hidden.float(), head.float(), labels)
    torch.testing.assert_close(ours.token, want, rtol=0.05, atol=0.1)


def test_no_response_tokens_at_all() -> None:
    hidden, head, labels = batch(torch.float32)
    labels[:] = IGNORE
    ours = response_logps(hidden, head, labels)
    assert ours.token.shape == (BATCH, TOKENS - 1) and not ours.token.any()
    assert ours.mean.tolist() == [0.0] * BATCH


def test_at_most_one_chunk_of_logits_is_made_at_a_time() -> None:
    hidden, head, labels = batch(torch.float32)
    seen: list[int] = []
    head.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[0]))
    ours = response_logps(hidden, head, labels, rows=5)
    ours.total.sum().backward()
    # 16 response positions in chunks of 5, each recomputed once for the backward (in reverse order).
    assert sorted(seen) == sorted([5, 5, 5, 1] * 2) and max(seen) * VOCAB < BATCH * TOKENS * VOCAB


class _Decoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN, dtype=torch.float64)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        from types import SimpleNamespace

        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(final_logit_softcapping=None)
        self.decoder = _Decoder()
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, dtype=torch.float64)

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.lm_head


def test_model_response_logps_runs_the_decoder_then_the_head() -> None:
    model = _Model()
    _, _, labels = batch(torch.float64)
    input_ids = labels.clamp(min=0)
    ours = model_response_logps(model, {"input_ids": input_ids}, labels, rows=2)
    assert isinstance(ours, SequenceLogps)
    want, _, _ = naive(model.decoder.embed(input_ids), model.lm_head, labels)
    torch.testing.assert_close(ours.token, want, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("frozen_head", [False, True])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_a_real_model_gives_trls_fused_head_log_probs(softcap, frozen_head: bool) -> None:
    # TRL 1.16's preference trainers score sequences with its fused LM head: the same numbers,
    # and the same gradients for every weight, must come out of ours on a tiny random Llama
    # (in float32: TRL's kernel computes in it whatever the model's dtype).
    from transformers import LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from tests.conftest import micro_llama_config

    torch.manual_seed(0)
    config = micro_llama_config(VOCAB, final_logit_softcapping=softcap)
    ours_model = LlamaForCausalLM(config)
    trl_model = LlamaForCausalLM(config)
    trl_model.load_state_dict(ours_model.state_dict())
    add_fused_lm_head(trl_model, outputs=("log_probs", "log_sum_sq_probs"))
    for model in (ours_model, trl_model):
        model.lm_head.requires_grad_(not frozen_head)
    _, _, labels = batch(torch.float32)
    inputs = {"input_ids": labels.clamp(min=1), "attention_mask": torch.ones_like(labels)}
    theirs = trl_model(**inputs, labels=labels, fused_lm_head=True)
    ours = model_response_logps(ours_model, inputs, labels, rows=3, with_log_sum_sq_probs=True)
    torch.testing.assert_close(ours.token, theirs.log_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        ours.log_sum_sq_probs, theirs.log_sum_sq_probs * ours.mask, rtol=1e-5, atol=1e-6
    )
    ours.mean.sum().backward()
    (theirs.log_probs.sum(1) / ours.mask.sum(1).clamp(min=1)).sum().backward()
    for (name, ours_param), trl_param in zip(
        ours_model.named_parameters(), trl_model.parameters(), strict=True
    ):
        assert (ours_param.grad is None) == (trl_param.grad is None), name
        if ours_param.grad is not None:
            torch.testing.assert_close(
                ours_param.grad, trl_param.grad, rtol=1e-5, atol=1e-6, msg=name
            )

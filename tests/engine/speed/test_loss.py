"""The chunked loss computes the same function as the model's own logits: loss and gradients."""

from __future__ import annotations

import pytest
import torch

from engine.speed.loss import chunked_loss_sum, full_logits_loss_sum, supports_chunked_loss


def _tiny(kind: str):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    if kind == "gemma2":  # soft-capped logits
        return Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8, final_logit_softcapping=5.0))
    return LlamaForCausalLM(LlamaConfig(**common))


def _batch(packed: bool = False):
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (3, 20))
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt that is not trained
    labels[2, 15:] = -100  # padding
    inputs = {"input_ids": ids}
    if packed:
        inputs["position_ids"] = torch.tensor([list(range(8)) + list(range(12))] * 3)
    else:
        mask = torch.ones_like(ids)
        mask[2, 15:] = 0
        inputs["attention_mask"] = mask
    return inputs, labels


def _loss_and_grads(model, fn, inputs, labels, **kw):
    model.zero_grad()
    loss = fn(model, inputs, labels, **kw)
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("lora", [False, True])
def test_chunked_loss_matches_full_logits(kind: str, packed: bool, lora: bool) -> None:
    model = _tiny(kind)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        )
    assert supports_chunked_loss(model)
    inputs, labels = _batch(packed)
    ref_loss, ref_grads = _loss_and_grads(model, full_logits_loss_sum, inputs, labels)
    loss, grads = _loss_and_grads(model, chunked_loss_sum, inputs, labels, rows=7)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)

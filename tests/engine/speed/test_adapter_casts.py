"""LoRA under autocast without PEFT's per-adapter input casts: same function, checked on CPU bf16."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine.models.adapters import LoraSettings, adapter_input_casts_off, prepare_for_training
from engine.train.tasks.sft import batch_loss_sum


def _lora_model() -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).to(torch.bfloat16)  # a 16-bit base, fp32 adapters
    model = prepare_for_training(
        base, method="lora", lora=LoraSettings(r=4, lora_alpha=8), gradient_checkpointing=True
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)  # B starts at zero: make the adapters count
    model.train()
    return model


def _loss_and_grads(model: torch.nn.Module, batch: dict, casts_off: bool):
    model.zero_grad(set_to_none=True)
    context = adapter_input_casts_off(model, torch.bfloat16 if casts_off else None)
    with context:
        loss = batch_loss_sum(model, batch, torch.bfloat16, "cpu", chunked=True)
        loss.backward()  # inside: checkpointing recomputes the graph it saved
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def test_same_loss_and_gradients_without_the_casts() -> None:
    model = _lora_model()
    torch.manual_seed(1)
    ids = torch.randint(0, 64, (2, 16))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    loss_on, grads_on = _loss_and_grads(model, batch, casts_off=False)
    loss_off, grads_off = _loss_and_grads(model, batch, casts_off=True)
    assert loss_off == loss_on  # the forward is exact: bf16 -> fp32 -> bf16 loses nothing
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name, grad in grads_on.items():
        torch.testing.assert_close(grads_off[name], grad, rtol=2e-2, atol=1e-4, msg=name)


def test_the_casts_come_back_after_the_step() -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = _lora_model()
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    with adapter_input_casts_off(model, torch.bfloat16):
        assert not any(layer.cast_input_dtype_enabled for layer in layers)
    assert all(layer.cast_input_dtype_enabled for layer in layers)  # chat and generate need them
    with adapter_input_casts_off(model, None):  # no autocast (fp32 or CPU runs): nothing changes
        assert all(layer.cast_input_dtype_enabled for layer in layers)

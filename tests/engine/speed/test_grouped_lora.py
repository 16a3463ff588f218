"""Grouped LoRA projections (q/k/v and gate/up as one function each) compute what the fused
projections compute one by one, and fall back to them whenever the group cannot run."""

from __future__ import annotations

import pytest
import torch

from engine.speed.fast_lora import apply_fused_lora
from engine.speed.fast_path import apply_fast_path
from engine.speed.layer_checkpoint import decoder_layers
from tests.engine.speed.test_fast_path import assert_same, batch, loss_and_grads, tiny, with_lora


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_grouped_matches_one_by_one(model_type: str) -> None:
    model = with_lora(tiny(model_type))
    apply_fused_lora(model)
    want = loss_and_grads(model)
    grouped = with_lora(tiny(model_type))
    applied = apply_fast_path(
        grouped, device="cpu", uses_adapter=True, gradient_checkpointing=False, grouped_lora=True
    )
    assert "grouped-lora(q/k/v 3/3)" in applied and "grouped-lora(gate/up 3/3)" in applied
    assert_same(loss_and_grads(grouped), want)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
@pytest.mark.parametrize("packed", [False, True])
def test_grouped_under_layer_checkpointing(model_type: str, packed: bool) -> None:
    model = with_lora(tiny(model_type))
    want = loss_and_grads(model, packed)
    applied = apply_fast_path(
        model,
        device="cpu",
        uses_adapter=True,
        gradient_checkpointing=True,
        save_layer_middle=True,
        grouped_lora=True,
    )
    assert "checkpoint:no-o-proj-recompute(3/3)" in applied
    assert_same(loss_and_grads(model, packed), want)


def test_grouped_under_bf16_autocast() -> None:
    """Adapters in fp32, matmuls in bf16 (the GPU's LoRA path): same function, bf16 rounding."""
    results = []
    for grouped in (False, True):
        model = with_lora(tiny("llama"))
        apply_fast_path(
            model,
            device="cpu",
            uses_adapter=True,
            gradient_checkpointing=True,
            save_layer_middle=True,
            grouped_lora=grouped,
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(loss_and_grads(model))
    (loss, grads), (ref_loss, ref_grads) = results[1], results[0]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-3, atol=1e-3)
    for name, grad in grads.items():
        assert grad.dtype == ref_grads[name].dtype == torch.float32
        relative = (grad - ref_grads[name]).norm() / ref_grads[name].norm()
        assert relative < 0.03, name  # bf16 GEMMs of other shapes round differently


def test_no_outputs_are_left_waiting() -> None:
    """Every member takes its output in the same forward: nothing stays held afterwards."""
    model = with_lora(tiny("llama"))
    apply_fast_path(
        model, device="cpu", uses_adapter=True, gradient_checkpointing=True, grouped_lora=True
    )
    loss_and_grads(model)
    for layer in decoder_layers(model):
        for projection in (layer.self_attn.q_proj, layer.mlp.up_proj):
            assert projection.forward.group.pending is None


def test_another_input_runs_the_member_alone() -> None:
    model = with_lora(tiny("llama"))
    reference = with_lora(tiny("llama"))
    apply_fast_path(
        model, device="cpu", uses_adapter=True, gradient_checkpointing=False, grouped_lora=True
    )
    attention, plain = decoder_layers(model)[0].self_attn, decoder_layers(reference)[0].self_attn
    x, other = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        q = attention.q_proj(x)  # computes q, k and v for x
        k_other = attention.k_proj(other)  # not x: computed on its own
        v = attention.v_proj(x)  # x's, as computed with q
        torch.testing.assert_close(q, plain.q_proj(x))
        torch.testing.assert_close(k_other, plain.k_proj(other))
        torch.testing.assert_close(v, plain.v_proj(x))


def test_disabled_adapters_give_the_base_model() -> None:
    model = with_lora(tiny("llama"))
    apply_fast_path(
        model, device="cpu", uses_adapter=True, gradient_checkpointing=False, grouped_lora=True
    )
    inputs, _ = batch()
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        base = model(**inputs).logits
    with torch.no_grad():
        torch.testing.assert_close(base, tiny("llama").eval()(**inputs).logits)

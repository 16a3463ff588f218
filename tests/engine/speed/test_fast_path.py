"""The fused LoRA projections and the per-layer checkpointing compute the same function as
PEFT's forward under transformers: loss and every gradient, on tiny models (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from engine.speed.fast_lora import apply_fused_lora
from engine.speed.fast_path import apply_fast_path
from engine.speed.layer_checkpoint import SKIP_DOWN_FORWARD
from engine.speed.loss import chunked_loss_sum

COMMON = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def tiny(model_type: str):
    import transformers

    configs = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {}),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),  # q/k/v biases
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 8}),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM, {"head_dim": 8}),
    }
    config_cls, model_cls, extra = configs[model_type]
    torch.manual_seed(0)
    return model_cls(config_cls(**COMMON, **extra))


def with_lora(model, targets="all-linear", dropout=0.0):
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets, init_lora_weights=False
    )
    return get_peft_model(model, config)


def batch(packed: bool = False):
    torch.manual_seed(1)
    ids = torch.randint(0, 101, (3, 20))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[2, 14:] = -100
    inputs = {"input_ids": ids}
    if packed:
        inputs["position_ids"] = torch.tensor([list(range(9)) + list(range(11))] * 3)
    else:
        mask = torch.ones_like(ids)
        mask[2, 14:] = 0
        inputs["attention_mask"] = mask
    return inputs, labels


def loss_and_grads(model, packed=False, seed=5):
    inputs, labels = batch(packed)
    model.zero_grad(set_to_none=True)
    model.train()
    torch.manual_seed(seed)
    loss = chunked_loss_sum(model, inputs, labels, rows=16)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(got, want) -> None:
    loss, grads = got
    ref_loss, ref_grads = want
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        # fp32 rounding, at the gradient's own scale: GEMMs of other shapes (grouped adapters)
        # sum in another order.
        atol = 2e-5 * max(1.0, ref_grads[name].abs().max().item())
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=atol, msg=name)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_fused_lora_matches_peft(model_type: str) -> None:
    model = with_lora(tiny(model_type))
    want = loss_and_grads(model)
    patched, fallbacks = apply_fused_lora(model)
    assert patched == 7 * COMMON["num_hidden_layers"] and not fallbacks
    assert_same(loss_and_grads(model), want)


def test_fused_lora_with_dropout_draws_the_same_masks() -> None:
    model = with_lora(tiny("llama"), dropout=0.2)
    want = loss_and_grads(model, seed=11)
    apply_fused_lora(model)
    assert_same(loss_and_grads(model, seed=11), want)


def test_fused_lora_leaves_the_base_model_reachable() -> None:
    model = with_lora(tiny("llama"))
    apply_fused_lora(model)
    inputs, _ = batch()
    model.eval()
    with torch.no_grad():
        adapted = model(**inputs).logits
        with model.disable_adapter():
            base = model(**inputs).logits
    reference = tiny("llama").eval()
    with torch.no_grad():
        torch.testing.assert_close(base, reference(**inputs).logits)
    assert not torch.allclose(adapted, base)


def test_dora_falls_back_to_peft() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny("llama"), LoraConfig(r=4, target_modules="all-linear", use_dora=True)
    )
    patched, fallbacks = apply_fused_lora(model)
    assert patched == 0 and fallbacks == {"DoRA or another LoRA variant": 21}


@pytest.mark.parametrize("model_type", [*sorted(SKIP_DOWN_FORWARD), "gemma2"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("middle", [False, True])
def test_layer_checkpointing_matches_no_checkpointing(
    model_type: str, packed: bool, middle: bool
) -> None:
    model = with_lora(tiny(model_type))
    want = loss_and_grads(model, packed)
    applied = apply_fast_path(
        model,
        device="cpu",
        uses_adapter=True,
        gradient_checkpointing=True,
        save_layer_middle=middle,
    )
    assert "checkpoint:per-layer" in applied
    skipped = any(name.startswith("checkpoint:no-down-proj-recompute") for name in applied)
    assert skipped == (model_type in SKIP_DOWN_FORWARD)  # gemma2 normalises the MLP output
    skipped_o = any(name.startswith("checkpoint:no-o-proj-recompute") for name in applied)
    assert skipped_o == (middle and model_type in SKIP_DOWN_FORWARD)
    assert_same(loss_and_grads(model, packed), want)


@pytest.mark.parametrize("middle", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_layer_checkpointing_replays_dropout(middle: bool, grouped: bool) -> None:
    """With grouped projections too: each draws its own dropout mask, as PEFT does, so the
    group steps aside (engine.speed.grouped_lora)."""
    model = with_lora(tiny("llama"), dropout=0.3)
    want = loss_and_grads(model, seed=3)
    apply_fast_path(
        model,
        device="cpu",
        uses_adapter=True,
        gradient_checkpointing=True,
        save_layer_middle=middle,
        grouped_lora=grouped,
    )
    assert_same(loss_and_grads(model, seed=3), want)


@pytest.mark.parametrize("middle", [False, True])
def test_projections_without_an_adapter_still_pass_their_gradient(middle: bool) -> None:
    """down_proj and o_proj without adapters: their recompute skipped, gradients intact."""
    model = with_lora(tiny("llama"), targets=["q_proj", "v_proj", "gate_proj"])
    want = loss_and_grads(model)
    applied = apply_fast_path(
        model,
        device="cpu",
        uses_adapter=True,
        gradient_checkpointing=True,
        save_layer_middle=middle,
    )
    assert "checkpoint:no-down-proj-recompute(3/3)" in applied
    assert ("checkpoint:no-o-proj-recompute(3/3)" in applied) == middle
    assert_same(loss_and_grads(model), want)


def test_saved_middle_is_what_the_recompute_uses() -> None:
    """The check above can fail: a wrong saved residual changes the gradients."""
    from engine.speed import layer_checkpoint

    model = with_lora(tiny("llama"))
    want = loss_and_grads(model)
    apply_fast_path(
        model,
        device="cpu",
        uses_adapter=True,
        gradient_checkpointing=True,
        save_layer_middle=True,
    )
    real = layer_checkpoint.SameGradient.forward
    layer_checkpoint.SameGradient.forward = staticmethod(
        lambda ctx, recomputed, saved: saved * 1.01
    )
    try:
        _, grads = loss_and_grads(model)
    finally:
        layer_checkpoint.SameGradient.forward = staticmethod(real)
    assert any(not torch.allclose(grads[name], want[1][name]) for name in grads)


def test_full_fine_tuning_recomputes_the_whole_layer() -> None:
    model = tiny("llama")
    want = loss_and_grads(model)
    applied = apply_fast_path(model, device="cpu", uses_adapter=False, gradient_checkpointing=True)
    assert applied == ["checkpoint:per-layer"]  # down_proj's weight trains: nothing to skip
    assert_same(loss_and_grads(model), want)


def test_checkpointing_keeps_no_layer_activations() -> None:
    """Past the forward, autograd holds nothing per layer (each layer keeps only its input, in
    the activation store): a model twice as deep saves as many tensors, none MLP-sized."""

    def saved_shapes(layers: int) -> list[torch.Size]:
        import transformers

        torch.manual_seed(0)
        config = transformers.LlamaConfig(**{**COMMON, "num_hidden_layers": layers})
        model = with_lora(transformers.LlamaForCausalLM(config))
        apply_fast_path(model, device="cpu", uses_adapter=True, gradient_checkpointing=True)
        inputs, labels = batch()
        saved: list[torch.Size] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.shape) or t, lambda t: t
        ):
            chunked_loss_sum(model, inputs, labels, rows=16)
        return saved

    shallow, deep = saved_shapes(2), saved_shapes(4)
    assert len(shallow) == len(deep)
    assert not any(shape[-1] == COMMON["intermediate_size"] for shape in deep)


def test_fused_lora_follows_the_active_adapter() -> None:
    """Adapters resolved once per module are looked up again after set_adapter."""
    from peft import LoraConfig

    model = with_lora(tiny("llama"))
    model.add_adapter(
        "other", LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    inputs, _ = batch()
    model.eval()
    want = {}
    with torch.no_grad():
        for name in ("default", "other"):
            model.set_adapter(name)
            want[name] = model(**inputs).logits
    apply_fused_lora(model)
    with torch.no_grad():
        for name in ("default", "other", "default"):
            model.set_adapter(name)
            torch.testing.assert_close(model(**inputs).logits, want[name])
    assert not torch.allclose(want["default"], want["other"])

"""Compiled decoder layers compute the same function as the eager ones (loss and every
gradient, CPU fp32, tiny models), alone and under finetty's per-layer checkpointing; only
training calls take the compiled code; and the decision follows training.torch_compile."""

from __future__ import annotations

import pytest
import torch

from engine import compile_layers
from engine.errors import ConfigError
from engine.fast_path import apply_fast_path
from tests.engine.test_fast_path import assert_same, batch, loss_and_grads, tiny, with_lora


def compiled_model(model_type: str, *, checkpointing: bool, middle: bool | None = None):
    model = with_lora(tiny(model_type))
    want = loss_and_grads(model)
    applied = apply_fast_path(
        model, device="cpu", uses_adapter=True, gradient_checkpointing=checkpointing,
        save_layer_middle=middle, compile_layers=True,
    )  # fmt: skip
    assert "torch.compile(decoder layers 3/3)" in applied
    return model, want


@pytest.mark.parametrize(
    ("model_type", "checkpointing", "middle"),
    [("llama", True, True), ("qwen2", True, False), ("qwen3", False, None)],
)
def test_compiled_layers_match_the_eager_ones(
    model_type: str, checkpointing: bool, middle: bool | None
) -> None:
    model, want = compiled_model(model_type, checkpointing=checkpointing, middle=middle)
    assert_same(loss_and_grads(model), want)
    assert_same(loss_and_grads(model), want)  # the cached variants, second time round


def test_evaluation_runs_the_eager_layers() -> None:
    from torch._dynamo.utils import counters

    model, _ = compiled_model("llama", checkpointing=True)
    loss_and_grads(model)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > 0
    inputs, _ = batch()
    model.eval()
    with torch.no_grad():
        model(**inputs)
        model(input_ids=inputs["input_ids"][:, :7])  # a new shape: would recompile if compiled
    assert counters["stats"]["unique_graphs"] == compiled


REASONS = dict(quant_bits=None, lora_dropout=0.0, gradient_checkpointing=True, processes=1)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"quant_bits": 4}, "4-bit base weights"),
        ({"processes": 2}, "several processes"),
        ({"lora_dropout": 0.05}, "dropout in the layers under gradient checkpointing"),
        ({"lora_dropout": 0.05, "gradient_checkpointing": False}, None),
        ({}, None),
    ],
)
def test_compile_reason(change: dict, reason: str | None) -> None:
    assert compile_layers.compile_reason(tiny("llama"), **{**REASONS, **change}) == reason


def test_attention_dropout_counts_as_dropout() -> None:
    model = tiny("llama")
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    assert compile_layers.compile_reason(model, **REASONS) == (
        "dropout in the layers under gradient checkpointing"
    )


@pytest.mark.parametrize(
    ("requested", "reason", "device", "liger", "want"),
    [
        (None, None, "cuda", None, (True, None)),
        (None, None, "cpu", None, (False, "no CUDA GPU")),
        (None, None, "cuda", True, (False, "training.use_liger_kernel: true")),
        (None, "4-bit base weights", "cuda", None, (False, "4-bit base weights")),
        (False, None, "cuda", None, (False, "training.torch_compile: false")),
        (True, None, "cpu", None, (True, None)),
    ],
)
def test_decide(requested, reason, device, liger, want) -> None:
    assert compile_layers.decide(requested, reason, device=device, liger_requested=liger) == want


def test_requested_but_impossible_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be compiled: 4-bit base weights"):
        compile_layers.decide(True, "4-bit base weights", device="cuda", liger_requested=None)

"""engine.speed.layer_graphs' bookkeeping, which runs on any device: what a layer call's graph
depends on, and putting static tensors in place of a call's own. The graphs themselves need a
GPU: tests/engine/test_gpu.py checks them against the eager layers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.speed.layer_graphs import (  # noqa: E402
    HOST_BOUND_WORK,
    LayerGraphs,
    layer_weights,
    signature,
    substitute,
)


def _call(length: int = 8) -> tuple[torch.Tensor, tuple, dict]:
    hidden = torch.zeros(2, length, 4)
    rotary = (torch.ones(1, length, 2), torch.ones(1, length, 2))
    kwargs = {
        "position_embeddings": rotary,
        "attention_mask": None,
        "use_cache": False,
        "position_ids": torch.arange(length)[None],
    }
    return hidden, (), kwargs


def test_the_signature_holds_shapes_constants_and_every_tensor_in_order() -> None:
    hidden, args, kwargs = _call()
    key, tensors = signature(hidden, args, kwargs)
    assert tensors[0] is hidden
    assert tensors[1] is kwargs["position_embeddings"][0]
    assert tensors[2] is kwargs["position_embeddings"][1]
    assert tensors[3] is kwargs["position_ids"]
    assert signature(*_call())[0] == key  # new tensors of the same shapes: the same graph
    assert signature(*_call(length=9))[0] != key
    changed = dict(kwargs, use_cache=True)
    assert signature(hidden, args, changed)[0] != key
    half = dict(kwargs, position_ids=kwargs["position_ids"].to(torch.float16))
    assert signature(hidden, args, half)[0] != key


def test_calls_that_cannot_be_graphed_have_no_signature() -> None:
    hidden, args, kwargs = _call()
    assert signature(hidden, args, dict(kwargs, past_key_values=object())) is None
    elsewhere = dict(kwargs, position_ids=torch.zeros(1, 8, device="meta"))
    assert signature(hidden, args, elsewhere) is None


def test_substitute_puts_the_static_tensors_where_the_call_had_its_own() -> None:
    hidden, args, kwargs = _call()
    _, tensors = signature(hidden, args, kwargs)
    statics = [t.clone() for t in tensors]
    new_args = substitute(args, iter(statics[1:]))
    rest = iter(statics[1:])
    substitute(args, rest)
    new_kwargs = substitute(kwargs, rest)
    assert new_args == ()
    assert new_kwargs["position_embeddings"][0] is statics[1]
    assert new_kwargs["position_embeddings"][1] is statics[2]
    assert isinstance(new_kwargs["position_embeddings"], tuple)
    assert new_kwargs["position_ids"] is statics[3]
    assert new_kwargs["attention_mask"] is None and new_kwargs["use_cache"] is False


def test_layers_on_the_cpu_run_eagerly() -> None:
    hidden, args, kwargs = _call()
    graphs = LayerGraphs()
    for _ in range(4):
        assert graphs.forward(0, hidden, args, kwargs, run=None, stashes_middle=False) is None
    assert graphs.captured == 0 and graphs.failure is None


def test_the_signature_keeps_no_reference_to_the_call() -> None:
    """A reference cycle here kept every layer input alive until the garbage collector ran:
    0.9 GiB more at the peak of a 0.5B step on the GPU."""
    import gc
    import weakref

    hidden, args, kwargs = _call()
    alive = weakref.ref(hidden)
    enabled = gc.isenabled()
    gc.disable()
    try:
        signature(hidden, args, kwargs)
        del hidden
        assert alive() is None
    finally:
        if enabled:
            gc.enable()


def test_layer_weights_count_every_linear_layer() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2
    )
    layer = LlamaDecoderLayer(config, layer_idx=0)
    head_dim, kv = 16, 2 * 16
    attention = 64 * 64 + 2 * 64 * kv + 64 * 64
    mlp = 3 * 64 * 128
    assert head_dim * 4 == 64 and layer_weights(layer) == attention + mlp


def test_only_layer_calls_small_enough_to_be_host_bound_are_graphed() -> None:
    """The measured shapes (bench/RESULTS.md, devR) fall on either side of the default limit:
    Qwen2.5-0.5B's layer (14.9M weights) and Llama-3.1-8B's (218M), at 8 x 2048 tokens."""
    graphs = LayerGraphs(weights={0: 14_909_440, 1: 218_103_808})
    hidden = torch.empty(8, 2048, 1, device="meta")
    assert graphs.worth_it(0, hidden)
    assert not graphs.worth_it(1, hidden) and graphs.too_large == 1
    assert 14_909_440 * 8 * 2048 < HOST_BOUND_WORK < 218_103_808 * 8 * 2048
    small_batch = torch.empty(1, 1024, 1, device="meta")
    assert graphs.worth_it(1, small_batch)  # the 8B layer on 1 x 1024 tokens is host-bound too
    always = LayerGraphs(max_work=None, weights={1: 218_103_808})
    assert always.worth_it(1, hidden)


def test_dequantized_weights_are_kept_only_for_host_bound_layer_calls() -> None:
    """devV (bench/RESULTS.md): keeping was worth +3.2% for 8B QLoRA at 1 x 2048 tokens and
    nothing at 8 x 2048, where it cost 0.26 GiB; True and False are kept to as asked."""
    from engine.speed.layer_checkpoint import keeps_dequantized_weights

    def keeps(asked: bool | None, batch: int) -> bool:
        hidden = torch.empty(batch, 2048, 1, device="meta")
        return keeps_dequantized_weights(asked, hidden, layer_weights=218_103_808)

    assert keeps(None, 1) and not keeps(None, 8)
    assert keeps(True, 8) and not keeps(False, 1)


def test_unset_means_adapter_training_on_a_cuda_device() -> None:
    from engine.config.derived import graphs_wanted

    assert graphs_wanted(None, cuda=True, uses_adapter=True) is None  # auto: by work
    assert graphs_wanted(None, cuda=True, uses_adapter=False) is False
    assert graphs_wanted(True, cuda=True, uses_adapter=False) is True
    assert graphs_wanted(True, cuda=False, uses_adapter=True) is False
    assert graphs_wanted(False, cuda=True, uses_adapter=True) is False


def test_a_signature_is_captured_after_its_warmup_calls_in_a_row_and_at_most_two() -> None:
    graphs = LayerGraphs(warmup=2, max_signatures=2)
    assert [graphs._due(0, "a") for _ in range(3)] == [False, False, True]
    assert graphs._due(0, "b") is False  # another shape starts its own count
    assert graphs._due(0, "a") is False  # ... and breaks the run of "a"
    graphs._slots.update({"a": None, "b": None})  # two signatures hold graphs already
    assert [graphs._due(1, "c") for _ in range(3)] == [False, False, False]
    assert [graphs._due(1, "b") for _ in range(3)] == [False, False, True]


def _lora_llama(lora_dropout: float, attention_dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=attention_dropout,
    )
    adapter = LoraConfig(r=4, lora_dropout=lora_dropout, target_modules=["q_proj", "v_proj"])
    return get_peft_model(LlamaForCausalLM(config), adapter)


@pytest.mark.parametrize(
    ("lora_dropout", "attention_dropout", "graph_dropout", "graphed"),
    [
        (0.1, 0.0, None, {0, 1}),  # LoRA's dropout, by default: replayable inside the graphs
        (0.1, 0.0, False, set()),  # asked not to
        (0.1, 0.1, None, set()),  # attention's own dropout stays eager
        (0.0, 0.0, None, set()),  # nothing random: graphed as any layer, not listed
    ],
)
def test_layers_with_lora_dropout_are_graphed_unless_asked_not_to_attention_dropout_never(
    lora_dropout: float, attention_dropout: float, graph_dropout: bool | None, graphed: set
) -> None:
    from engine.speed.layer_checkpoint import graphs_of, install

    model = _lora_llama(lora_dropout, attention_dropout)
    asked = {} if graph_dropout is None else {"graph_dropout": graph_dropout}
    install(model, offload=False, cuda_graphs=True, **asked)
    graphs = graphs_of(model)
    assert graphs is not None and graphs.random_ok == graphed
    assert graphs.max_work is None  # forced on: no work limit

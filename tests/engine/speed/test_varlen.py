"""Variable-length attention for packed batches is the same function as transformers'
block-diagonal-mask SDPA: loss and every gradient, through the trainer's own collate (CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.data.encode import EncodedExample  # noqa: E402
from engine.data.prepare import pack_examples  # noqa: E402
from engine.speed import varlen  # noqa: E402
from engine.train.tasks.sft import IGNORE, batch_loss_sum, collate  # noqa: E402


def tiny(model_type: str):
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }
    config_cls, model_cls = classes[model_type]
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    return model_cls(config)


def packed_batch() -> list[EncodedExample]:
    generator = torch.Generator().manual_seed(3)
    docs = []
    for length in (7, 12, 5, 9, 15, 3, 11):
        ids = torch.randint(1, 97, (length,), generator=generator).tolist()
        labels = [IGNORE, IGNORE, *ids[2:]]
        docs.append(EncodedExample(ids, labels, num_trained=length - 2))
    return pack_examples(docs, max_length=24)


def loss_and_grads(model, examples) -> tuple:
    model.zero_grad(set_to_none=True)
    batch = collate(examples, 0, "cpu")
    loss = batch_loss_sum(model, batch, None, "cpu", chunked=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_varlen_equals_the_masked_sdpa_path(model_type: str) -> None:
    examples = packed_batch()
    assert len(examples) >= 3 and any(len(ex.seq_lengths) > 1 for ex in examples)
    assert len({len(ex.input_ids) for ex in examples}) > 1  # rows padded too
    model = tiny(model_type)
    want_loss, want = loss_and_grads(model, examples)
    varlen.use_for(model)
    assert model.config._attn_implementation == varlen.NAME
    got_loss, got = loss_and_grads(model, examples)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_attention_across_documents_would_differ() -> None:
    """The check above can fail: without per-document bounds the loss changes."""
    examples = packed_batch()
    model = tiny("llama")
    varlen.use_for(model)
    want_loss, _ = loss_and_grads(model, examples)
    batch = collate(examples, 0, "cpu")
    width = batch["input_ids"].shape[1]
    rows = batch["input_ids"].shape[0]
    whole_rows = torch.arange(0, rows * width + 1, width, dtype=torch.int32)
    batch.update(cu_seq_lens_q=whole_rows, cu_seq_lens_k=whole_rows)
    loss = batch_loss_sum(model, batch, None, "cpu", chunked=True)
    assert abs(loss.item() - want_loss.item()) > 1e-3


def test_unpacked_batches_fall_back_to_sdpa() -> None:
    model = tiny("llama")
    generator = torch.Generator().manual_seed(4)
    examples = [
        EncodedExample(ids, [IGNORE, *ids[1:]], num_trained=len(ids) - 1)
        for ids in (torch.randint(1, 97, (n,), generator=generator).tolist() for n in (9, 6))
    ]
    want_loss, _ = loss_and_grads(model, examples)
    varlen.use_for(model)
    got_loss, _ = loss_and_grads(model, examples)
    torch.testing.assert_close(got_loss, want_loss)


def test_document_bounds() -> None:
    # Row 1: documents of 3 and 2, then 1 of padding; row 2: a document of 4, 2 of padding.
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    bounds, longest = varlen.document_bounds(positions)
    assert (bounds.tolist(), longest) == ([0, 3, 5, 6, 10, 12], 4)
    assert bounds.dtype == torch.int32

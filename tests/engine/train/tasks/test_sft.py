"""The SFT task: batches as the model and the loss see them, and the tokens that count."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from engine.data.encode import EncodedExample  # noqa: E402
from engine.train.tasks.sft import IGNORE, SftTask, collate, trained_token_count  # noqa: E402


def _example(ids: list[int], trained_from: int) -> EncodedExample:
    labels = [IGNORE] * trained_from + ids[trained_from:]
    return EncodedExample(ids, labels, num_trained=len(ids) - trained_from)


def test_equal_lengths_carry_no_mask() -> None:
    batch = collate([_example([5, 6, 7], 1), _example([8, 9, 10], 2)], 0, "cpu")
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 10]]


def test_padding_carries_a_mask_and_the_trained_positions() -> None:
    batch = collate([_example([5, 6, 7, 8], 2), _example([9, 10], 1)], 0, "cpu")
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8], [IGNORE, 10, IGNORE, IGNORE]]
    # Flat positions of labels[:, 1:] (3 a row) that carry a label.
    expected = (batch["labels"][:, 1:] != IGNORE).reshape(-1).nonzero().squeeze(1)
    assert batch["trained_index"].tolist() == expected.tolist() == [1, 2, 3]


def test_packed_rows_carry_positions() -> None:
    packed = EncodedExample(
        [1, 2, 3, 4],
        [IGNORE, 2, IGNORE, 4],
        num_trained=2,
        position_ids=[0, 1, 0, 1],
        seq_lengths=[2, 2],
    )
    batch = collate([packed, _example([7, 8], 1)], 0, "cpu")
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    # The second row: a document of 2, then its padding as a document of its own.
    assert batch["cu_seq_lens_q"].tolist() == [0, 2, 4, 6, 8]
    assert batch["max_length_q"] == 2


def test_trained_tokens_skip_the_first_position_and_ignored_labels() -> None:
    # Position 0 is never predicted; labels of IGNORE carry no loss.
    examples = [_example([5, 6, 7, 8], 0), _example([9, 10, 11], 2)]
    assert trained_token_count(examples) == 3 + 1
    assert SftTask().trained_token_count(examples) == 4


@pytest.mark.parametrize("chunked", [False, True])
def test_loss_sum_is_the_summed_cross_entropy_of_the_trained_tokens(
    chunked: bool, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model, task = AutoModelForCausalLM.from_pretrained(tiny_model_dir), SftTask()
    examples = [_example([3, 4, 5, 6, 7], 2), _example([8, 9, 10], 1)]
    batch = task.collate(examples, 0, "cpu")
    assert task.supports_chunked_loss(model)
    loss = task.loss_sum(model, batch, None, "cpu", chunked)
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits = model(**inputs).logits[:, :-1].float()
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)

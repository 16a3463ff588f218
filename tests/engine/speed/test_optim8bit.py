"""The sync-free 8-bit AdamW makes bitsandbytes' own updates, bit for bit."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from engine.speed.optim8bit import sync_free_adamw8bit  # noqa: E402


def _params(seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    # 128 x 96 takes the 8-bit blockwise path, 16 x 8 (under min_8bit_size) the 32-bit one.
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator))
        for shape in ((128, 96), (16, 8), (4096 + 7,))
    ]


def _train(cls: type, steps: int = 4) -> tuple[list, list]:
    params = _params(0)
    groups = [
        {"params": params[:2], "weight_decay": 0.1},
        {"params": params[2:], "weight_decay": 0.0},
    ]
    optimizer = cls(groups, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        for index, p in enumerate(params):
            # A parameter without a gradient this step is skipped, as bitsandbytes does.
            p.grad = None if (step, index) == (1, 1) else torch.randn(p.shape, generator=generator)
        optimizer.step()
    states = [
        {key: value.clone() for key, value in optimizer.state[p].items() if torch.is_tensor(value)}
        for p in params
    ]
    return [p.detach().clone() for p in params], states


def test_updates_and_states_equal_bitsandbytes() -> None:
    ours, our_states = _train(sync_free_adamw8bit())
    theirs, their_states = _train(bnb.optim.AdamW8bit)
    assert any(s["state1"].dtype == torch.uint8 for s in our_states)  # both paths ran
    assert any(s["state1"].dtype == torch.float32 for s in our_states)
    for mine, reference in zip(ours, theirs, strict=True):
        assert torch.equal(mine, reference)
    for mine, reference in zip(our_states, their_states, strict=True):
        assert mine.keys() == reference.keys()
        for key in mine:
            assert torch.equal(mine[key], reference[key]), key


def test_parameters_moved() -> None:
    before = _params(0)
    after, _ = _train(sync_free_adamw8bit())
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_state_dict_round_trip() -> None:
    params = _params(0)
    optimizer = sync_free_adamw8bit()(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    restored = sync_free_adamw8bit()(params, lr=1e-2)
    restored.load_state_dict(optimizer.state_dict())
    assert torch.equal(restored.state[params[0]]["state1"], optimizer.state[params[0]]["state1"])

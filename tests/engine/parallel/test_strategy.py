"""The execution strategies: one process in full here; DDP and FSDP in real two-process CPU jobs
(torchrun, gloo), each rank writing what it saw for the test to compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from engine.core.errors import ConfigError  # noqa: E402
from engine.parallel.distributed import DistContext  # noqa: E402
from engine.parallel.strategy import (  # noqa: E402
    DataParallel,
    ShardedParallel,
    SingleProcess,
    execution_strategy,
)
from engine.runs import checkpoint as ckpt  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def _squares(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return (model(batch["x"]) ** 2).sum()


def _linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1, bias=False)


def test_the_factory_picks_the_mode() -> None:
    ctx = DistContext(rank=1, local_rank=1, world_size=2, local_world_size=2)
    assert type(execution_strategy(None, sharded=True, device="cpu")) is SingleProcess
    assert type(execution_strategy(ctx, sharded=False, device="cpu")) is DataParallel
    assert type(execution_strategy(ctx, sharded=True, device="cpu")) is ShardedParallel


def test_what_each_mode_allows() -> None:
    main = DistContext(rank=0, local_rank=0, world_size=2, local_world_size=2)
    other = DistContext(rank=1, local_rank=1, world_size=2, local_world_size=2)
    single = SingleProcess()
    assert (single.world, single.is_main, single.writes_checkpoints) == (1, True, True)
    assert single.allows_chunked_loss and single.reads_metrics_late and single.retries_out_of_memory
    ddp_main, ddp_other = DataParallel(main, "cpu"), DataParallel(other, "cpu")
    assert ddp_main.writes_checkpoints and not ddp_other.writes_checkpoints  # same bytes on both
    assert not ddp_other.is_main and ddp_other.world == 2 and ddp_other.allows_chunked_loss
    assert not ddp_main.reads_metrics_late and not ddp_main.retries_out_of_memory
    fsdp_other = ShardedParallel(other, "cpu")
    assert fsdp_other.writes_checkpoints and not fsdp_other.allows_chunked_loss  # its own shard
    assert fsdp_other.eval_batches(5, 2) == 2 and ddp_other.eval_batches(5, 2) is None


def test_sharding_refuses_an_8bit_optimizer_before_touching_the_model() -> None:
    ctx = DistContext(rank=0, local_rank=0, world_size=2, local_world_size=2)
    with pytest.raises(ConfigError, match="adamw_8bit"):
        ShardedParallel(ctx, "cpu").prepare(_linear(), "adamw_8bit", _squares)


def test_single_process_runs_the_loss_on_the_model_and_keeps_everything_local() -> None:
    model, strategy = _linear(), SingleProcess()
    strategy.prepare(model, "adamw_torch", _squares)
    batch = {"x": torch.ones(2, 3)}
    with strategy.gradient_sync(False):
        strategy.loss(batch).backward()
    assert model.weight.grad is not None  # no sync to hold back: the gradient is there at once
    with torch.no_grad():
        assert float(strategy.loss(batch)) == pytest.approx(float(_squares(model, batch)))
    assert strategy.shard((1, 2, 3)) == [1, 2, 3]
    assert strategy.sum_floats([1.5, 2]) == [1.5, 2]
    assert strategy.broadcast("x") == "x" and strategy.gather("x") == ["x"]
    loss = torch.tensor(3.0)
    assert strategy.step_loss_sum(loss) is loss  # left on the device for the deferred read
    sums = torch.tensor([1.0, 2.0])
    assert strategy.step_sums(sums) is sums  # a task's metrics: left on the device too
    before = torch.random.get_rng_state()
    strategy.seed_rank(0, step=5)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_single_process_clips_and_reports_the_norm_before_clipping() -> None:
    model, strategy = _linear(), SingleProcess()
    strategy.prepare(model, "adamw_torch", _squares)
    model.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
    norm = strategy.clip_grad_norm([model.weight], 1.0)
    assert torch.allclose(model.weight.grad.norm(), torch.tensor(1.0))
    deferred, read = strategy.grad_norm(norm, True), strategy.grad_norm(norm, False)
    assert isinstance(deferred, torch.Tensor) and read == pytest.approx(5.0)


def test_single_process_checkpoints_are_the_plain_format(tmp_path: Path) -> None:
    model, strategy = _linear(), SingleProcess()
    strategy.prepare(model, "adamw_torch", _squares)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    _squares(model, {"x": torch.ones(2, 3)}).backward()
    optimizer.step()
    scheduler.step()
    state = ckpt.TrainerState(step=1, epoch=0, examples_done_in_epoch=2, tokens_seen=6, elapsed_s=1)
    kwargs = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=None, state=state)
    path = strategy.save_checkpoint(tmp_path / "a", is_adapter=False, keep=None, **kwargs)
    direct = ckpt.save_checkpoint(tmp_path / "b", is_adapter=False, keep=None, **kwargs)
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in direct.iterdir())
    for name in ("trainable.safetensors", "trainer_state.json", ckpt.MARKER):
        assert (path / name).read_bytes() == (direct / name).read_bytes()
    fresh = _linear()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 1.0)
    loaded = SingleProcess().load_checkpoint(
        path,
        model=fresh,
        optimizer=fresh_optimizer,
        scheduler=fresh_scheduler,
        scaler=None,
        max_step=4,
        examples=8,
    )
    assert loaded == state and torch.equal(fresh.weight, model.weight)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1


# Each rank exercises one strategy and writes what it saw to OUT/rank-N.json.
WORKER = """
import json, os, sys
from pathlib import Path
import torch
from engine.parallel import distributed
from engine.parallel.strategy import execution_strategy
from engine.runs import checkpoint as ckpt

out, sharded = Path(os.environ["OUT"]), os.environ["MODE"] == "fsdp"
ctx = distributed.init_from_env(use_cpu=True)
strategy = execution_strategy(ctx, sharded=sharded, device="cpu")
rank, seen = ctx.rank, {}

def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)

def loss_fn(model, batch):
    return model(input_ids=batch["x"]).logits.float().pow(2).sum()

def optimizer_of(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

def flat_grads(model):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grads = [g.full_tensor() if hasattr(g, "full_tensor") else g for g in grads]
    return torch.cat([g.reshape(-1) for g in grads]).tolist()

model = tiny_model()
strategy.prepare(model, "adamw_torch", loss_fn)
optimizer, scheduler = optimizer_of(model)
batches = [{"x": torch.tensor([[1 + rank, 2, 3]])}, {"x": torch.tensor([[4, 5 + rank, 6]])}]
for index, batch in enumerate(batches):
    with strategy.gradient_sync(index == len(batches) - 1):
        strategy.loss(batch).backward()
    if index == 0 and not sharded:
        seen["held_back"] = flat_grads(model)  # DDP: a no_sync micro-batch keeps its own
seen["synced"] = flat_grads(model)
params = [p for p in model.parameters() if p.requires_grad]
seen["norm"] = strategy.grad_norm(strategy.clip_grad_norm(params, 1e9), False)
optimizer.step()
scheduler.step()
seen["shard"] = strategy.shard(list(range(5)))
seen["sums"] = strategy.sum_floats([rank + 1.0, 2.0])
seen["step_loss"] = strategy.step_loss_sum(torch.tensor(rank + 1.0))
seen["step_sums"] = strategy.step_sums(torch.tensor([rank + 1.0, 2.0 * rank])).tolist()
seen["broadcast"] = strategy.broadcast(f"from {rank}")
seen["gather"] = strategy.gather(rank)
seen["eval_batches"] = strategy.eval_batches(5, 2)
strategy.seed_rank(0)
seen["stream"] = torch.rand(1).item()
state = ckpt.TrainerState(step=1, epoch=0, examples_done_in_epoch=4, tokens_seen=12, elapsed_s=1)
saved = None
if strategy.writes_checkpoints:
    saved = strategy.save_checkpoint(out / "checkpoints", model=model, optimizer=optimizer,
        scheduler=scheduler, scaler=None, state=state, is_adapter=False, keep=None)
    seen["saved"] = sorted(p.name for p in saved.iterdir())
path = Path(strategy.broadcast(str(saved)))
fresh = tiny_model()
restore = execution_strategy(ctx, sharded=sharded, device="cpu")
restore.prepare(fresh, "adamw_torch", loss_fn)
fresh_optimizer, fresh_scheduler = optimizer_of(fresh)
loaded = restore.load_checkpoint(path, model=fresh, optimizer=fresh_optimizer,
    scheduler=fresh_scheduler, scaler=None, max_step=4, examples=8)
def full(tensor):
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach()
seen["restored"] = loaded == state and all(
    torch.equal(full(a), full(b)) for a, b in zip(model.parameters(), fresh.parameters()))
(out / f"rank-{rank}.json").write_text(json.dumps(seen))
distributed.leave(0 if distributed.shutdown(ctx, clean=True) == [] else 1)
"""


def _job(tmp_path: Path, mode: str) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.update(OUT=str(tmp_path), MODE=mode, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*command, "--nproc-per-node", "2", str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(2)]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        x == pytest.approx(y, rel=1e-5, abs=1e-6) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_share_gradients_sums_and_checkpoints(tmp_path: Path, mode: str) -> None:
    zero, one = _job(tmp_path, mode)
    # Gradients are reduced on the last micro-batch: both ranks then hold the same ones.
    assert _close(zero["synced"], one["synced"]) and zero["norm"] == pytest.approx(one["norm"])
    if mode == "ddp":
        assert not _close(zero["held_back"], one["held_back"])  # each rank's own, unreduced
    assert zero["shard"] == [0, 2, 4] and one["shard"] == [1, 3]
    assert zero["sums"] == one["sums"] == [3.0, 4.0] and zero["step_loss"] == 3.0
    assert zero["step_sums"] == one["step_sums"] == [3.0, 2.0]  # a task's metrics, summed
    assert zero["broadcast"] == one["broadcast"] == "from 0"
    assert zero["gather"] == [0, 1] and one["gather"] is None
    assert zero["eval_batches"] == one["eval_batches"] == (2 if mode == "fsdp" else None)
    assert zero["stream"] != one["stream"]  # different dropout masks on each rank
    assert (
        "sharded" in zero["saved"] if mode == "fsdp" else "trainable.safetensors" in zero["saved"]
    )
    assert ("saved" in one) == (mode == "fsdp")  # DDP: rank 0 alone writes
    assert zero["restored"] and one["restored"]

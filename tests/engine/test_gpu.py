"""GPU paths, run on the lent device (skipped on CPU): QLoRA 4-bit, 8-bit, bf16 LoRA, fp16 with
loss scaling, full fine-tuning with 8-bit Adam, and the fast path (fused kernels + chunked loss)
(fused LoRA, per-layer offloaded checkpointing, Liger, chunked loss) against the plain one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from engine.core.events import RecordingSink, RunStarted, Step  # noqa: E402
from engine.train.run import Run  # noqa: E402


def _run(make_preset, tmp_path: Path, **changes):
    preset = make_preset(max_steps=4, save_steps=2, per_device_train_batch_size=4)
    for dotted, value in changes.items():
        section, key = dotted.split("__") if "__" in dotted else (None, dotted)
        setattr(getattr(preset, section) if section else preset, key, value)
    sink = RecordingSink()
    result = Run(preset, sink, runs_root=tmp_path).execute()
    assert result.status == "finished", result.error
    started = sink.of_type(RunStarted)[0]
    losses = [s.loss for s in sink.of_type(Step)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    return started, losses


def test_qlora_4bit_nf4(make_preset, tmp_path: Path) -> None:
    # load_in_4bit first: assignment re-validates, and qlora needs a 4-bit base.
    started, _ = _run(
        make_preset,
        tmp_path,
        model__load_in_4bit=True,
        method="qlora",
        model__dtype="auto",
        training__optim="paged_adamw_8bit",
    )
    assert started.model["quantization"].startswith("4-bit nf4") and started.device == "cuda"
    assert started.precision == "bfloat16"


def test_lora_on_8bit_base(make_preset, tmp_path: Path) -> None:
    started, _ = _run(make_preset, tmp_path, model__load_in_8bit=True, model__dtype="auto")
    assert started.model["quantization"].startswith("8-bit")


def test_fp16_uses_loss_scaling(make_preset, tmp_path: Path) -> None:
    started, _ = _run(make_preset, tmp_path, model__dtype="float16")
    assert started.precision == "float16 with loss scaling"


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_fp16_fast_path_matches_bf16(make_preset, tmp_path: Path, method: str) -> None:
    """The path a T4 or V100 gets (fp16 with loss scaling) through the whole fast path: fused
    LoRA, Liger, offloaded per-layer checkpointing; its losses follow bf16's (fp16 rounding)."""
    common = dict(lora__lora_dropout=0.0, training__gradient_checkpointing=True)
    if method == "qlora":
        common.update(model__load_in_4bit=True, method="qlora")
    started, fp16 = _run(make_preset, tmp_path / "fp16", model__dtype="float16", **common)
    assert started.precision == "float16 with loss scaling"
    assert "checkpoint:offload-to-host" in started.model.get("kernels")
    _, bf16 = _run(make_preset, tmp_path / "bf16", model__dtype="bfloat16", **common)
    print(method, "fp16", fp16, "bf16", bf16)
    for a, b in zip(fp16, bf16, strict=True):
        assert abs(a - b) <= 0.01 * abs(b) + 1e-3


def test_auto_dtype_is_bf16_only_where_the_gpu_has_it_natively() -> None:
    from engine.models.loading import select_dtype

    major, _ = torch.cuda.get_device_capability()
    assert select_dtype("auto", "cuda") == (torch.bfloat16 if major >= 8 else torch.float16)


def test_full_finetune_with_8bit_adam(make_preset, tmp_path: Path) -> None:
    started, _ = _run(
        make_preset,
        tmp_path,
        method="full",
        model__dtype="auto",
        training__optim="adamw_8bit",
        training__gradient_checkpointing=True,
    )
    assert started.trainable_params == started.total_params


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_fast_path_matches_plain_path(
    make_preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Liger kernels, fused LoRA, per-layer checkpointing offloaded to host memory without
    down_proj's recompute, and the chunked loss give the same per-step losses as plain
    transformers+peft without checkpointing (bf16 noise)."""
    common = dict(model__dtype="bfloat16", lora__lora_dropout=0.0)
    if method == "qlora":
        common.update(model__load_in_4bit=True, method="qlora")
    started, fast = _run(
        make_preset,
        tmp_path / "fast",
        training__use_liger_kernel=None,
        training__gradient_checkpointing=True,
        **common,
    )
    kernels = started.model.get("kernels")
    assert "checkpoint:offload-to-host" in kernels and any("fused-lora" in k for k in kernels)
    assert any(k.startswith("checkpoint:no-down-proj-recompute") for k in kernels)
    assert "checkpoint:cuda-graphs(auto)" in kernels  # the default on one GPU
    monkeypatch.setattr("engine.train.tasks.sft.supports_chunked_loss", lambda model: False)
    _, plain = _run(
        make_preset,
        tmp_path / "plain",
        training__use_liger_kernel=False,
        training__fused_lora=False,
        training__gradient_checkpointing=False,
        **common,
    )
    print(method, "fast", fast, "plain", plain, "kernels", kernels)
    for a, b in zip(fast, plain, strict=True):
        assert abs(a - b) <= 0.01 * abs(b) + 1e-3


def test_out_of_memory_halves_the_auto_micro_batch(
    make_preset, tmp_path: Path, monkeypatch
) -> None:
    """A real CUDA OOM: auto starts far too large (full logits, 400-token rows) and must halve down."""
    import json
    import random

    from engine.core.events import LogLine

    rng = random.Random(0)
    words = [
        "red",
        "blue",
        "cat",
        "dog",
        "tree",
        "river",
        "house",
        "lamp",
        "book",
        "ship",
        "moon",
        "star",
        "rain",
        "snow",
        "wind",
        "hill",
    ]
    data = tmp_path / "long.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"text": " ".join(rng.choice(words) for _ in range(400))})
            for _ in range(2048)
        )
    )
    preset = make_preset(max_steps=2, save_steps=0, per_device_train_batch_size="auto")
    preset.dataset.path, preset.dataset.format, preset.dataset.train_on = str(data), "text", "all"
    preset.dataset.val_size, preset.model.max_seq_length = 0, 512
    monkeypatch.setattr("engine.train.run.Run._auto_micro_batch", lambda self: 2048)
    monkeypatch.setattr("engine.train.tasks.sft.supports_chunked_loss", lambda model: False)
    sink = RecordingSink()
    result = Run(preset, sink, runs_root=tmp_path / "runs").execute()
    retries = [e.text for e in sink.of_type(LogLine) if "Out of memory" in e.text]
    print("retries", retries)
    assert result.status == "finished", result.error
    assert retries and all(math.isfinite(s.loss) for s in sink.of_type(Step))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_two_gpus_match_one(make_preset, tmp_path: Path, method: str) -> None:
    """`finetty train --gpus 2` (DDP; FSDP2 for full) against one GPU, same global batch."""
    import json
    import os
    import subprocess
    import sys

    from engine.config.presets import to_yaml

    preset = make_preset(max_steps=6, save_steps=3, per_device_train_batch_size=4)
    preset.model.dtype = "bfloat16"
    if method == "qlora":
        preset.model.load_in_4bit = True
    preset.method = method
    preset.lora.lora_dropout = 0.0
    preset.training.gradient_accumulation_steps = 2
    file = tmp_path / "p.yaml"
    file.write_text(to_yaml(preset))
    root = Path(__file__).resolve().parents[2]

    def train(*extra: str, runs: str, gpus: str | None = None) -> list[float]:
        env = dict(os.environ)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        cmd = [
            sys.executable,
            "-m",
            "tui.cli",
            "train",
            str(file),
            "--no-tui",
            "--run-dir",
            str(tmp_path / runs),
            *extra,
        ]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        (events,) = (tmp_path / runs).glob("*/*/events.jsonl")
        rows = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
        return [row["loss"] for row in rows if row["type"] == "step"]

    one = train(runs="one", gpus="0")
    two = train("--gpus", "2", "--set", "training.gradient_accumulation_steps=1", runs="two")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert b == pytest.approx(a, rel=2e-2)  # bf16 noise, different reduction order


def test_packed_varlen_attention_matches_the_masked_path(make_preset, tmp_path: Path) -> None:
    """Packed documents through PyTorch's varlen flash attention give the per-step losses of
    transformers' SDPA with a block-diagonal mask (bf16 noise)."""
    common = dict(model__dtype="bfloat16", lora__lora_dropout=0.0, dataset__packing=True)
    started, varlen = _run(make_preset, tmp_path / "varlen", **common)
    assert "varlen attention (packed documents)" in started.model.get("kernels")
    _, masked = _run(make_preset, tmp_path / "masked", model__attn_implementation="sdpa", **common)
    print("varlen", varlen, "masked", masked)
    for a, b in zip(varlen, masked, strict=True):
        assert abs(a - b) <= 0.01 * abs(b) + 1e-3


def _train_layers(
    folder: Path, *, qlora: bool, graphs: bool, accumulate: int, dropout: float = 0.0
):
    """Six optimizer steps of the fast path on fixed-shape random batches (the last one of
    another length), straight through the model: per-step losses, adapter weights, graphs."""
    from engine.models import loading
    from engine.models.adapters import LoraSettings, prepare_for_training
    from engine.speed.fast_path import apply_fast_path
    from engine.speed.kernels import apply_fused_kernels
    from engine.speed.layer_checkpoint import graphs_of

    torch.manual_seed(0)
    loaded = loading.load_model(
        loading.ModelSource("local", str(folder)),
        device="cuda",
        dtype=torch.bfloat16,
        attention="sdpa",
        quant_bits=4 if qlora else None,
    )
    apply_fused_kernels(loaded.model, device="cuda", requested=None)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = prepare_for_training(
        loaded.model,
        method="qlora" if qlora else "lora",
        lora=LoraSettings(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets),
        gradient_checkpointing=False,
    )
    applied = apply_fast_path(
        model,
        device="cuda",
        uses_adapter=True,
        gradient_checkpointing=True,
        cuda_graphs=graphs,
        graph_dropout=graphs and dropout > 0,
    )
    assert ("checkpoint:cuda-graphs" in applied) is graphs
    model.train()  # the layers are checkpointed (and graphed) in training only
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().float().cpu() for n, p in named.items()}
    # Plain SGD: the updates are the gradients themselves (Adam would hide a wrong scale).
    optimizer = torch.optim.SGD(list(named.values()), lr=0.5)
    data = torch.Generator().manual_seed(1)
    vocab = model.get_input_embeddings().weight.shape[0]
    losses = []
    for step in range(6):
        length = 48 if step < 5 else 40
        for _ in range(accumulate):
            ids = torch.randint(0, vocab, (2, length), generator=data).cuda()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            (loss / accumulate).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    updates = {n: p.detach().float().cpu() - start[n] for n, p in named.items()}
    return losses, updates, graphs_of(model)


def _graphs_against_eager(folder: Path, method: str, accumulate: int, dropout: float = 0.0):
    """Train with and without graphs; assert the same losses and adapter updates (bf16
    noise at most: identical kernels give identical bits)."""
    qlora = method == "qlora"
    eager, eager_updates, none = _train_layers(
        folder, qlora=qlora, graphs=False, accumulate=accumulate, dropout=dropout
    )
    graphed, graph_updates, graphs = _train_layers(
        folder, qlora=qlora, graphs=True, accumulate=accumulate, dropout=dropout
    )
    assert none is None and graphs is not None
    print(method, accumulate, dropout, "eager", eager, "graphs", graphed, "failure", graphs.failure)
    assert graphs.failure is None
    assert graphs.captured == 2 * 2  # each of the 2 layers: a forward and a backward graph
    for a, b in zip(graphed, eager, strict=True):
        assert abs(a - b) <= 1e-3 * abs(b)
    largest = max(u.abs().max().item() for u in eager_updates.values())
    worst = max((graph_updates[n] - u).abs().max().item() for n, u in eager_updates.items())
    print("largest update", largest, "largest difference", worst)
    assert largest > 0 and worst <= 1e-2 * largest
    return graphs


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_cuda_graph_layers_match_eager_layers(
    tiny_model_dir: Path, method: str, accumulate: int
) -> None:
    """Checkpointed layers replayed as CUDA graphs (engine.speed.layer_graphs) give the eager fast
    path's losses and adapter updates: captured on the third call, replayed after, and a batch
    of another length runs eagerly."""
    _graphs_against_eager(tiny_model_dir, method, accumulate)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_cuda_graph_layers_with_dropout_match_eager_layers(
    tiny_model_dir: Path, method: str
) -> None:
    """With LoRA dropout (graph_dropout, the default): the forward graph draws its
    masks from the generator's state as the eager forward does, and the recompute's graph
    draws the same masks again, so losses and updates match the eager path."""
    graphs = _graphs_against_eager(tiny_model_dir, method, accumulate=1, dropout=0.2)
    assert graphs.random_ok == {0, 1}


def test_a_chat_reply_streams_from_a_model_on_the_gpu(tiny_model_dir: Path) -> None:
    """December 4 2026: the reply's stop criterion made its tensor on the CPU, and transformers
    raised "Expected all tensors to be on the same device" on cuda:0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models.generate import stream_reply

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).to("cuda")
    messages = [{"role": "user", "content": "Hello"}]
    reply = "".join(stream_reply(model, tokenizer, messages, max_new_tokens=8))
    assert isinstance(reply, str)

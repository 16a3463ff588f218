"""finetty's engine on the anchor shapes: tokens/s, peak memory, MFU, one JSON row per run.

    python bench/gpu_throughput.py --shape llama8b --mode qlora --batch 8 --seq 2048 --steps 15 --warmup 3 \
        --out bench-rows.jsonl [--plain]

Same set-up as the anchors (shared/bench/anchor_bench.py): random weights built from the real
config, fixed-length synthetic token blocks (every token real and trained), LoRA r=16 on the 7
projections, gradient checkpointing, adamw_8bit, SDPA. It drives finetty's own pieces (model
loading, kernels, adapters, the Trainer and its chunked loss), not a copy of them. ``--plain``
turns off the fused kernels, fused LoRA, per-layer checkpointing and the chunked loss (plain
transformers + PEFT with transformers' checkpointing): the reference for the exactness check.
``--no-fused-lora`` and ``--no-offload`` take one piece out each, for A/B rows.
Each row also carries the estimator's prediction for the same config (issue: estimate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SHAPES = {  # config.json values of the real checkpoints; weights are random here
    "llama8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "torch_dtype": "bfloat16",
    },
    "tiny": {  # a smoke test of this script on the CPU: --shape tiny --device cpu
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 512,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    },
    "qwen05b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "torch_dtype": "bfloat16",
    },
}
PEAK_TFLOPS = 989.4  # H100/H200 SXM dense bf16 datasheet, as the anchors use
GIB = 2**30


def prepare_model(shape: str, root: Path, device: str) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    folder = root / shape
    if (folder / "PREPARED").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(SHAPES[shape]))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(folder), dtype=torch.bfloat16
        )
    model.save_pretrained(folder)
    del model
    vocab = {f"t{i}": i for i in range(SHAPES[shape]["vocab_size"])}
    eos = SHAPES[shape]["eos_token_id"]
    vocab.pop(f"t{eos}")
    vocab["<eos>"] = eos
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>"
    ).save_pretrained(folder)
    (folder / "PREPARED").write_text("ok\n")
    return folder


def synthetic_examples(rows: int, seq: int, vocab: int, seed: int = 1234) -> list:
    import numpy as np

    from engine.data.encode import EncodedExample

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(vocab, 120_000), size=(rows, seq)).tolist()
    return [EncodedExample(row, [-100, *row[1:]], num_trained=seq - 1) for row in ids]


def realistic_examples(rows: int, seq: int, vocab: int, seed: int = 1234) -> list:
    """Chat-like documents: lognormal lengths (median 400 tokens, clipped to 32..seq), the first
    30% of each a prompt without labels. Enough documents to fill ``rows`` rows of ``seq``."""
    import numpy as np

    from engine.data.encode import EncodedExample

    rng = np.random.default_rng(seed)
    docs, tokens = [], 0
    while tokens < rows * seq * 1.05:
        length = int(np.clip(rng.lognormal(np.log(400), 0.8), 32, seq))
        ids = rng.integers(0, min(vocab, 120_000), size=length).tolist()
        prompt = max(1, int(0.3 * length))
        docs.append(
            EncodedExample(ids, [-100] * prompt + ids[prompt:], num_trained=length - prompt)
        )
        tokens += length
    return docs


def flops_per_token(shape: str, seq: int) -> float:
    c = SHAPES[shape]
    h, i, layers, vocab = (
        c["hidden_size"],
        c["intermediate_size"],
        c["num_hidden_layers"],
        c["vocab_size"],
    )
    head = h // c["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * c["num_key_value_heads"] * head + 3 * h * i
    return 4 * (layers * per_layer + h * vocab) + 6 * layers * seq * h


def run(args: argparse.Namespace) -> dict:
    import torch

    from engine.config.derived import TrainSettings
    from engine.core.events import RecordingSink, Step
    from engine.models import loading
    from engine.models.adapters import LoraSettings, prepare_for_training
    from engine.parallel import distributed
    from engine.runs.control import RunControl
    from engine.speed.kernels import apply_fused_kernels
    from engine.train.trainer import Trainer

    if args.stock_optimizer:
        import bitsandbytes as bnb

        import engine.speed.optim8bit

        engine.speed.optim8bit.sync_free_adamw8bit = lambda: bnb.optim.AdamW8bit
    if args.no_liger_loss:
        import engine.speed.loss

        engine.speed.loss.USE_LIGER_LOSS = False
    if args.peft_casts:
        import contextlib

        import engine.models.adapters

        engine.models.adapters.adapter_input_casts_off = lambda model, amp: contextlib.nullcontext()
    cuda = args.device == "cuda"
    if cuda:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    # Under torchrun: DDP over every process, as `finetty train --gpus N` runs it.
    dist = (
        distributed.init_from_env(use_cpu=not cuda) if distributed.launched_distributed() else None
    )
    world = dist.world_size if dist else 1
    if dist is None or dist.is_main:
        folder = prepare_model(args.shape, Path(args.model_root), args.device)
    if dist is not None:
        import torch.distributed

        torch.distributed.barrier()
        folder = prepare_model(args.shape, Path(args.model_root), args.device)
    loaded = loading.load_model(
        loading.ModelSource("local", str(folder)),
        device=args.device,
        dtype=torch.bfloat16 if cuda else torch.float32,
        attention="sdpa",
        quant_bits=4 if args.mode == "qlora" else None,
    )
    kernels = (
        [] if args.plain else apply_fused_kernels(loaded.model, device=args.device, requested=None)
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # Several processes + full fine-tuning: FSDP2, as `finetty train --gpus N` runs it (its
    # sharded parameters need torch's AdamW; bitsandbytes works on whole tensors).
    sharded = dist is not None and args.mode == "full"
    model = prepare_for_training(
        loaded.model,
        method="full" if args.mode == "full" else "lora",
        lora=LoraSettings(
            r=16, lora_alpha=16, lora_dropout=args.lora_dropout, target_modules=targets
        ),
        gradient_checkpointing=args.plain,  # the plain reference: transformers' checkpointing
    )
    if not args.plain:
        from engine.speed.fast_path import apply_fast_path

        kernels += apply_fast_path(
            model,
            device=args.device,
            uses_adapter=args.mode != "full",
            gradient_checkpointing=True,
            fused_lora=not args.no_fused_lora,
            activation_offloading=not args.no_offload,
            sharded=sharded,
            save_layer_middle=False if args.no_save_middle else None,
            grouped_lora=not args.no_grouped_lora,
            cuda_graphs=True if args.cuda_graphs else False if args.no_cuda_graphs else None,
            graph_dropout=not args.no_graph_dropout,
            keep_dequantized=False
            if args.no_keep_dequantized
            else True
            if args.keep_dequantized
            else None,
        )
    settings = TrainSettings(
        micro_batch=args.batch,
        max_steps=args.steps,
        optim="adamw_8bit" if cuda and not sharded else "adamw_torch",
        learning_rate=2e-4,
        save_steps=0,
        device=args.device,
        pad_token_id=0,
        chunked_loss=not args.plain,
        seed=0,
        amp_dtype=torch.bfloat16 if cuda and args.mode != "full" and not args.plain else None,
        sharded=sharded,
    )
    sink = RecordingSink()
    vocab = SHAPES[args.shape]["vocab_size"]
    if args.batching == "fixed":
        data = synthetic_examples(args.batch * args.steps * world, args.seq, vocab)
    else:
        from engine.data.prepare import pack_examples

        docs = realistic_examples(args.batch * args.steps * world, args.seq, vocab)
        data = docs if args.batching == "pad" else pack_examples(docs, args.seq)
        if args.batching == "pack-varlen":
            from engine.speed import varlen

            varlen.use_for(model)
            kernels.append("varlen attention (packed documents)")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    profiler = _profiler(args) if args.profile else None
    if profiler is not None:
        sink = _StepProfilingSink(sink, profiler)
        profiler.start()
    watch = _SyncWatch(sink, args.warmup) if args.sync_check and cuda else None
    if watch is not None:
        sink = watch
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            model,
            data,
            [],
            settings,
            sink=sink,
            control=RunControl(),
            checkpoint_dir=Path(tmp),
            is_adapter=False,
            dist=dist,
        )
        trainer.run()
    if watch is not None:
        watch.stop()
        sink = watch.inner
        Path(args.sync_check).write_text(watch.report(), encoding="utf-8")
    if profiler is not None:
        profiler.stop()
        sink = sink.inner
        Path(args.profile).write_text(profile_report(profiler), encoding="utf-8")
    steps = sink.of_type(Step)
    timed = [s.step_time_s for s in steps[args.warmup :]]
    step_time = statistics.median(timed)
    tokens_per_s = args.batch * args.seq * world / step_time
    if args.batching != "fixed":  # steps differ in tokens: real (unpadded) tokens over time
        tokens_per_s = sum(s.tokens for s in steps[args.warmup :]) / sum(timed)
    if dist is not None and not dist.is_main:
        return {"follower": True}
    return {
        "gpus": world,
        "fsdp": sharded,
        "stack": "finetty_plain" if args.plain else "finetty",
        "batching": args.batching,
        "variant": "+".join(
            name
            for name, on in (
                ("stock-optimizer", args.stock_optimizer),
                ("no-fused-lora", args.no_fused_lora),
                ("no-grouped-lora", args.no_grouped_lora),
                ("cuda-graphs", args.cuda_graphs),
                ("no-cuda-graphs", args.no_cuda_graphs),
                ("no-graph-dropout", args.no_graph_dropout),
                ("no-keep-dequantized", args.no_keep_dequantized),
                ("keep-dequantized", args.keep_dequantized),
                (f"lora-dropout-{args.lora_dropout}", args.lora_dropout > 0),
                ("no-offload", args.no_offload),
                ("no-save-middle", args.no_save_middle),
                ("no-liger-loss", args.no_liger_loss),
            )
            if on
        )
        or None,
        "peft_input_casts": args.peft_casts,
        "mode": args.mode,
        "shape": args.shape,
        "batch": args.batch,
        "seq": args.seq,
        "tokens_per_s": round(tokens_per_s, 1),
        "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
        "mfu_4n": round(
            tokens_per_s / world * flops_per_token(args.shape, args.seq) / (PEAK_TFLOPS * 1e12), 4
        ),
        "median_step_s": round(step_time, 3),
        "losses": [round(s.loss, 5) for s in steps],
        "step_times_s": [round(s.step_time_s, 4) for s in steps],
        "kernels": kernels,
        **_graph_report(model),
        "chunked_loss": not args.plain,
        **(predicted(args, folder) if cuda else {}),
    }


def _graph_report(model) -> dict:
    from engine.speed.layer_checkpoint import graphs_of

    graphs = graphs_of(model)
    if graphs is None:
        return {}
    return {
        "graphs_captured": graphs.captured,
        "graphs_too_large": graphs.too_large,
        "graphs_failure": graphs.failure,
    }


class _StepProfilingSink:
    """Advances the profiler's schedule at every optimizer step (the Trainer emits a Step each)."""

    def __init__(self, inner, profiler) -> None:
        self.inner, self.profiler = inner, profiler

    def emit(self, event) -> None:
        self.inner.emit(event)
        if event.type == "step":
            self.profiler.step()


class _SyncWatch:
    """Counts the host-device waits of two steps after warm-up, with where they come from:
    CUDA's sync-debug warnings (.item(), blocking copies) and explicit synchronize() calls."""

    def __init__(self, inner, warmup: int) -> None:
        self.inner, self.warmup = inner, warmup
        self.sites: dict[str, int] = {}
        self.active = False
        self._restore: list = []

    def emit(self, event) -> None:
        self.inner.emit(event)
        if event.type != "step":
            return
        if event.step == self.warmup:
            self.start()
        elif event.step == self.warmup + 2:
            self.stop()

    def _record(self, kind: str) -> None:
        import traceback

        frames = [
            f"{Path(f.filename).name}:{f.lineno} {f.name}"
            for f in traceback.extract_stack()[:-2]
            if "/torch/" not in f.filename and "warnings" not in f.filename
        ][-4:]
        key = f"{kind}: " + " < ".join(reversed(frames))
        self.sites[key] = self.sites.get(key, 0) + 1

    def start(self) -> None:
        import warnings

        import torch

        if self.active:
            return
        self.active = True
        original_sync, original_show = torch.cuda.synchronize, warnings.showwarning

        def synchronize(*a, **k):
            self._record("torch.cuda.synchronize")
            return original_sync(*a, **k)

        def show(message, category, *rest, **k):
            if "synchroniz" in str(message):
                self._record("sync-debug")
                return None
            return original_show(message, category, *rest, **k)

        torch.cuda.synchronize, warnings.showwarning = synchronize, show
        self._restore = [original_sync, original_show]
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        import warnings

        import torch

        if not self.active:
            return
        self.active = False
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize, warnings.showwarning = self._restore

    def report(self) -> str:
        lines = ["host-device waits over two steps after warm-up (count, site: innermost first)"]
        for site, count in sorted(self.sites.items(), key=lambda item: -item[1]):
            lines.append(f"{count:6d}  {site}")
        return "\n".join(lines) + "\n"


def _profiler(args: argparse.Namespace):
    from torch.profiler import ProfilerActivity, profile, schedule

    return profile(
        activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
        schedule=schedule(wait=args.warmup, warmup=1, active=2, repeat=1),
    )


# Kernel-name patterns, first match wins: where a step's GPU time goes.
CATEGORIES = [
    ("nccl (gradient all-reduce)", ("nccl",)),
    ("4-bit dequantize (bitsandbytes)", ("dequant", "kdequant", "kgemm_4bit")),
    ("attention (SDPA / flash)", ("flash", "fmha", "attention", "sdpa", "efficient_attention")),
    ("matmul (cuBLAS / cutlass)", ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "cublas")),
    ("loss (chunked cross-entropy)", ("cross_entropy", "log_softmax", "softmax", "nll")),
    ("norm / rope / swiglu (Liger, Triton)", ("rms", "rope", "swiglu", "liger", "triton")),
    ("optimizer (8-bit Adam)", ("optimizer", "adam", "8bit")),
    ("copies / casts", ("copy", "cast", "convert", "to_copy", "cat")),
    ("elementwise / reductions", ("elementwise", "vectorized", "reduce", "unrolled")),
]


def profile_report(profiler) -> str:
    """Top kernels by GPU time over the profiled steps, and a share per category."""
    from torch.autograd import DeviceType

    # Kernels only: CPU-side ops (aten::mm, ProfilerStep*) would count their kernels twice.
    # ProfilerStep* and Optimizer.step#... are annotations whose GPU span covers their kernels.
    events = [
        e
        for e in profiler.key_averages()
        if e.device_type == DeviceType.CUDA
        and e.self_device_time_total > 0
        and not e.key.startswith("ProfilerStep")
        and "#" not in e.key
    ]
    total = sum(e.self_device_time_total for e in events) or 1.0
    shares: dict[str, float] = {}
    for event in events:
        name = event.key.lower()
        label = next(
            (label for label, signs in CATEGORIES if any(sign in name for sign in signs)), "other"
        )
        shares[label] = shares.get(label, 0.0) + event.self_device_time_total
    lines = [f"GPU time over the profiled steps: {total / 1e3:.1f} ms", "", "share  category"]
    for label, value in sorted(shares.items(), key=lambda item: -item[1]):
        lines.append(f"{100 * value / total:5.1f}%  {label}")
    lines += ["", "share  ms      calls  kernel"]
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[:25]:
        lines.append(
            f"{100 * event.self_device_time_total / total:5.1f}%  "
            f"{event.self_device_time_total / 1e3:7.1f} {event.count:6d}  {event.key[:100]}"
        )
    return "\n".join([*lines, "", *host_report(profiler)]) + "\n"


def host_report(profiler) -> list[str]:
    """Whether the GPU waited for the host: the profiled window's wall time against the union
    of its kernels' busy intervals, the kernel launches, and the host ops costing most."""
    from torch.autograd import DeviceType

    raw = profiler.events()
    # ProfilerStep* shows up more than once a step (CPU and GPU sides): count optimizer steps.
    steps = [
        e for e in raw if e.name.startswith("ProfilerStep") and e.device_type == DeviceType.CPU
    ]
    optimizer_steps = sum(1 for e in raw if e.name.startswith("Optimizer.step#"))
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in raw
        if e.device_type == DeviceType.CUDA
        and not e.name.startswith(("Memcpy", "Memset"))
        and not e.name.startswith("ProfilerStep")
        and "#" not in e.name
    )
    busy, end = 0.0, float("-inf")
    for start, stop in kernels:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    wall = sum(e.time_range.end - e.time_range.start for e in steps) or 1.0
    launches = sum(
        1
        for e in raw
        if e.name
        in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
    )
    per_step = max(optimizer_steps, 1)
    lines = [
        f"host: {per_step} profiled steps, {wall / 1e3 / max(len(steps), 1):.1f} ms wall a step on the host's clock",
        f"GPU busy (union of compute kernels): {busy / 1e3 / per_step:.1f} ms a step",
        f"kernel launches: {launches / per_step:.0f} a step",
        "",
        "host ms a step (self CPU)  calls  op",
    ]
    cpu = [e for e in profiler.key_averages() if e.device_type == DeviceType.CPU]
    for event in sorted(cpu, key=lambda e: -e.self_cpu_time_total)[:30]:
        lines.append(
            f"{event.self_cpu_time_total / 1e3 / per_step:8.2f} {event.count // per_step:8d}  {event.key[:90]}"
        )
    return lines


def predicted(args: argparse.Namespace, folder: Path) -> dict:
    from engine.config.presets import validate
    from engine.plan.estimate import estimate
    from engine.plan.gpus import detect_gpus, spec_for

    preset = validate(
        {
            "model": {"name_or_path": str(folder), "dtype": "bfloat16", "max_seq_length": args.seq},
            "method": args.mode,
            "lora": {"r": 16, "lora_alpha": 16, "target_modules": "all-linear"},
            "training": {
                "per_device_train_batch_size": args.batch,
                "gradient_checkpointing": True,
                "optim": "adamw_8bit",
                "max_steps": args.steps,
            },
        }
    )
    result = estimate(preset, spec_for(detect_gpus()[0]))
    return {
        "predicted_peak_gib": round(result.memory.total, 2),
        "predicted_step_s": result.step_time_s,
    }


def versions() -> dict:
    import importlib.metadata as md

    import torch

    out = {
        name: _version(md, name)
        for name in ("torch", "transformers", "peft", "bitsandbytes", "liger-kernel")
    }
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return out


def _version(md, name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=list(SHAPES), default="llama8b")
    parser.add_argument("--mode", choices=["qlora", "lora", "full"], default="qlora")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no fused kernels or LoRA, transformers' checkpointing, full logits (the reference)",
    )
    parser.add_argument("--no-fused-lora", action="store_true", help="PEFT's own LoRA forward")
    parser.add_argument(
        "--no-grouped-lora",
        action="store_true",
        help="q/k/v and gate/up one by one, not grouped (engine.speed.grouped_lora, the default)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA graphs for every checkpointed layer call (the default: where host-bound)",
    )
    parser.add_argument(
        "--no-cuda-graphs", action="store_true", help="no CUDA graphs (engine.speed.layer_graphs)"
    )
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument(
        "--no-graph-dropout",
        action="store_true",
        help="layers with LoRA dropout run eagerly, not as CUDA graphs (the default graphs them)",
    )
    parser.add_argument(
        "--no-keep-dequantized",
        action="store_true",
        help="4-bit layers dequantize again in their backward instead of keeping the recompute's",
    )
    parser.add_argument(
        "--keep-dequantized",
        action="store_true",
        help="4-bit layers keep the recompute's weights for their backward at every batch size "
        "(the default: where a layer call is host-bound)",
    )
    parser.add_argument(
        "--no-liger-loss", action="store_true", help="engine.speed.loss's own frozen-head loss"
    )
    parser.add_argument(
        "--no-offload", action="store_true", help="keep checkpointed layer inputs on the GPU"
    )
    parser.add_argument(
        "--model-root", default=os.environ.get("FINETTY_BENCH_MODELS", "/tmp/finetty_models")
    )
    parser.add_argument("--session", default=time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument(
        "--peft-casts",
        action="store_true",
        help="keep PEFT's per-adapter input casts (the behaviour before finetty turned them off)",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="profile two steps after warm-up; write the report here"
    )
    parser.add_argument(
        "--no-save-middle",
        action="store_true",
        help="do not keep the post-attention residual (o_proj is recomputed)",
    )
    parser.add_argument(
        "--stock-optimizer",
        action="store_true",
        help="bitsandbytes' AdamW8bit as shipped (a device-wide wait after each parameter)",
    )
    parser.add_argument(
        "--sync-check", metavar="FILE", help="list the host-device waits of two steps here"
    )
    parser.add_argument(
        "--batching",
        choices=["fixed", "pad", "pack-mask", "pack-varlen"],
        default="fixed",
        help="fixed: the anchors' full-length blocks; else chat-like lengths, padded per batch, "
        "or packed with transformers' per-document SDPA mask, or with varlen attention",
    )
    parser.add_argument("--out", help="append the row to this JSONL file")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    try:
        row = {"session": args.session, **run(args)}
        if row.get("follower"):
            return  # rank 0 prints the job's row
    except Exception as exc:  # noqa: BLE001 - a failed config is a row too (e.g. OOM), never a lost table
        row = {
            "session": args.session,
            "stack": "finetty",
            "mode": args.mode,
            "shape": args.shape,
            "batch": args.batch,
            "seq": args.seq,
            "error": f"{type(exc).__name__}: {exc}"[:500],
        }
    row.update(
        card=versions()["gpu"],
        # The device's copy of the tree carries a stale .git: the caller names the commit sent.
        commit=os.environ.get("FINETTY_COMMIT") or commit,
        versions=versions(),
    )
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()

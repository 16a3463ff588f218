"""Peak memory and step time of a preset on a GPU (or the CPU), without loading the model.

Numbers are bytes per parameter and per token, from the model's shape. The terms, and where
they come from, are documented where they are computed. No torch, transformers or peft here:
`finetty estimate` must answer in well under a second.
"""

from __future__ import annotations

import importlib.util
import math
import textwrap
from dataclasses import dataclass, replace

import psutil

from engine.config.derived import (
    auto_micro_batch,
    compute_dtype,
    graphs_wanted,
    micro_batch,
    offload_activations,
    precision,
    quantization,
    reads_pairs,
    uses_gpu,
)
from engine.config.schema import Preset
from engine.core.units import count, duration, share
from engine.plan.gpus import CPU_TRAINING_SHARE, GpuSpec, cpu_matmul_flops, training_flops
from engine.plan.graph_work import host_bound
from engine.plan.loss_chunks import CHUNKABLE, chunk_rows
from engine.plan.schedule import run_steps
from engine.plan.shapes import ModelShape, shape_for
from engine.plan.token_lengths import DatasetLengths, measure, padded_width

GIB = 2**30
CUDA_CONTEXT_GIB = 0.5  # CUDA context, cuBLAS workspaces: outside torch's allocator
# Python + torch + transformers + peft + the engine resident before the model loads: 0.40 GiB
# measured on this project's 2-core CI box (bench/RESULTS.md), + the tokenizer and the dataset.
CPU_BASELINE_GIB = 0.45
SLACK = 0.10  # allocator fragmentation (measured reserved/allocated: 1.04-1.45)
# Time a decoder layer adds to each micro-batch beyond its matmuls (Python, kernel launches and,
# for 4-bit layers, dequantization), with gradient checkpointing: forward, recompute, backward.
# Fitted to Llama-3.1-8B on an H200 at 2048 tokens (devT, devV: bench/results.jsonl), where the
# step is the matmul time plus this: eager LoRA 0.241 s at micro-batch 1 and 0.399 s at 2 give
# 0.083 s over 32 layers; eager QLoRA 0.381 s at 1; graphed (engine.speed.layer_graphs) LoRA 0.187
# and 0.347 s at 1 and 2, graphed QLoRA 0.202 s at 1. Full fine-tuning keeps the earlier
# measured ratio of 1/1.6 of LoRA's. Without checkpointing a layer runs two passes, not three.
LAYER_HOST_S = {  # (4-bit, graphed) -> seconds per layer per micro-batch
    (False, False): 0.0026,
    (True, False): 0.0069,
    (False, True): 0.0009,
    (True, True): 0.0014,
}
FULL_HOST_SHARE = 1 / 1.6
MATMUL_FULL_HIDDEN, MATMUL_EXPONENT = 4096, 0.3  # see step_time
BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128)
OPTIM_BYTES = {
    "paged_adamw_32bit": 8.0,
    "adamw_8bit": 2 * (1 + 4 / 256),
    "paged_adamw_8bit": 2 * (1 + 4 / 256),
}  # others: 2 states in the param dtype


@dataclass(frozen=True)
class Memory:
    """Peak memory terms in GiB; ``total`` is the peak, not always their plain sum."""

    weights: float
    trainable: float  # LoRA adapters (fp32); 0 for full fine-tuning, whose weights are trainable
    gradients: float
    optimizer: float
    activations: float
    logits: float  # logits and the cross-entropy buffers
    cuda_graphs: float  # the layer graphs' static tensors and the working memory their pool keeps
    overhead: float  # CUDA context (or the CPU process baseline) and allocator slack
    total: float


@dataclass(frozen=True)
class Plan:
    """Everything the memory and time model needs, resolved from a preset and a device."""

    shape: ModelShape
    method: str
    quant: str  # none | nf4 | fp4 | int8
    double_quant: bool
    dtype: str  # bfloat16 | float16 | float32
    micro_batch: int
    grad_accum: int
    seq_len: int
    checkpointing: bool
    optim: str
    lora_params: int
    lora_inputs: int  # summed in_features of the adapted modules in one layer
    gpu: GpuSpec | None
    offload: bool = (
        False  # checkpointed layer inputs in host memory (engine.speed.layer_checkpoint)
    )
    fused_lora: bool = False  # engine.speed.fast_lora, without dropout: no extra copy of the inputs
    liger: bool = False  # Liger kernels, and its fused loss for a frozen head (engine.speed.loss)
    # LoRA with offloading also keeps each layer's post-attention residual (host memory), and a
    # 4-bit layer's recompute keeps its dequantized weights for its backward.
    save_middle: bool = False
    # CUDA graphs of the checkpointed layers (engine.speed.layer_graphs): True always, None where a
    # layer call is host-bound (engine.plan.graph_work), False never.
    cuda_graphs: bool | None = False


@dataclass(frozen=True)
class Estimate:
    preset: str
    model: str
    architecture: str
    device: str
    on_gpu: bool
    capacity_gib: float  # GPU memory, or system RAM for a CPU run
    method: str
    dtype: str
    quantization: str
    params_model: int  # the model's own parameters
    params_total: int  # with the adapters, as the run's log counts them
    params_trainable: int
    micro_batch: int
    grad_accum: int
    seq_len: int  # tokens of the longest micro-batch row that memory is sized for
    gradient_checkpointing: bool
    optim: str
    memory: Memory
    fits: bool
    headroom_gib: float
    recommended_micro_batch: int | None  # largest that fits, keeping the global batch
    recommended_grad_accum: int | None
    needs_gradient_checkpointing: bool
    needs_qlora: bool
    tokens_per_step: int
    flops_per_step: float
    mfu: float
    step_time_s: float
    total_steps: int | None
    eta_s: float | None
    hourly_price: float | None
    cost_usd: float | None
    advice: tuple[str, ...]
    notes: tuple[str, ...]
    max_seq_length: int = 0
    lengths: str = "max_seq_length"  # "measured" (the dataset's real token lengths) or this
    mean_tokens: float | None = None  # mean padded row of a micro-batch, when measured


def make_plan(
    preset: Preset,
    gpu: GpuSpec | None,
    micro_batch: int | None = None,
    liger_installed: bool | None = None,
    seq_len: int | None = None,
) -> Plan:
    """``seq_len``: the longest sequence the run will see (measured), else max_seq_length."""
    shape = shape_for(preset.model.name_or_path)
    model, training, lora = preset.model, preset.training, preset.lora
    dtype = compute_dtype(model.dtype, cuda=gpu is not None, bf16=lambda: bool(gpu and gpu.bf16))
    lora_params = lora_inputs = 0
    if preset.uses_adapter:
        lora_params = shape.lora_param_count(lora.r, lora.target_modules)
        lora_inputs = _adapted_inputs(shape, lora.target_modules)
    micro = micro_batch or training.per_device_train_batch_size
    offload = training.gradient_checkpointing and offload_activations(
        training.activation_offloading, cuda=gpu is not None
    )
    if liger_installed is None:
        liger_installed = importlib.util.find_spec("liger_kernel") is not None
    liger = bool(gpu is not None and training.use_liger_kernel is not False and liger_installed)
    return Plan(
        shape,
        preset.method,
        quantization(model),
        model.bnb_4bit_use_double_quant,
        dtype,
        micro if isinstance(micro, int) else 1,
        training.gradient_accumulation_steps,
        seq_len or model.max_seq_length,
        training.gradient_checkpointing,
        training.optim,
        lora_params,
        lora_inputs,
        gpu,
        offload,
        bool(training.fused_lora and lora.lora_dropout == 0 and not lora.use_dora),
        liger,
        save_middle=offload and preset.uses_adapter,
        cuda_graphs=graphs_wanted(
            training.cuda_graphs, cuda=gpu is not None, uses_adapter=preset.uses_adapter
        ),
    )


def memory(plan: Plan) -> Memory:
    """The peak-memory model (GiB), following what engine.models.loading/adapters/trainer allocate."""
    s, n, n_lin = plan.shape, plan.shape.param_count(), plan.shape.linear_param_count()
    per_layer = n_lin // s.num_hidden_layers  # one layer's linear weights
    d = 4 if plan.dtype == "float32" else 2
    four_bit = plan.quant in ("nf4", "fp4")
    # Full fine-tuning in fp16 on a GPU keeps fp32 master weights (AMP); bf16 and fp32 train in
    # place, and so does fp16 on the CPU.
    kept = precision(plan.method, plan.dtype, cuda=plan.gpu is not None).weights
    weight_bytes = 4 if kept == "float32" else 2
    # Non-quantized weights (norms, embeddings, lm_head) stay in the compute dtype: finetty does
    # not upcast them to fp32 the way PEFT's prepare_model_for_kbit_training does.
    rest = d
    if four_bit:
        # bitsandbytes 4-bit: 0.5 B/weight + an fp32 absmax per 64 weights, or with double
        # quantization an 8-bit absmax per 64 and an fp32 constant per 256 blocks.
        consts = (1 / 64 + 4 / (64 * 256)) if plan.double_quant else 4 / 64
        weights = n_lin * (0.5 + consts) + (n - n_lin) * rest
    elif plan.quant == "int8":
        weights = n_lin * 1.0 + (n - n_lin) * rest  # LLM.int8: 1 B/weight, row scales ~0
    else:
        weights = n * weight_bytes
    if plan.method == "full":
        trainable_n, state_bytes, trainable, grads = n, weight_bytes, 0.0, n * weight_bytes
    else:  # PEFT keeps adapters in fp32 (autocast_adapter_dtype): weights and grads fp32
        trainable_n, state_bytes = plan.lora_params, 4
        trainable = grads = trainable_n * 4.0
    # torch AdamW keeps 2 states in the parameter's dtype (bitsandbytes 32-bit: fp32); 8-bit
    # AdamW 2 uint8 states + an fp32 absmax per 256 (tensors < 4096 elements stay 32-bit: ignored).
    per_param = OPTIM_BYTES.get(plan.optim) or 2.0 * state_bytes
    optim = trainable_n * (0.0 if plan.optim == "sgd" else per_param)

    # Activations saved for backward, bytes per token per layer, after Korthikanti et al. 2022
    # ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1: 34sbh + 5as^2b
    # for a GPT block), adapted to llama blocks: no dropout masks; SDPA/flash keeps no s^2
    # scores, only q (after RoPE), k, v, the output and its contiguous copy for o_proj;
    # SwiGLU saves gate, up, silu(gate) and their product (4I); HF's RMSNorm saves an fp32 copy
    # of its input (4h) and its output (a*h). Adapters: each adapted module's input is saved
    # once more in the compute dtype for the LoRA branch (autocast runs it in bf16/fp16).
    # With Liger, SwiGLU keeps gate and up and recomputes their product (down_proj's input is
    # kept by down_proj), and RMSNorm keeps no fp32 copy; the fused LoRA path reads the
    # projection's own saved input, so without dropout the adapters add no copy.
    a = d
    attention = a * (s.hidden_size + 3 * s.q_dim + 2 * s.kv_dim)
    mlp = a * (s.hidden_size + (3 if plan.liger else 4) * s.intermediate_size)
    layer = attention + mlp + (0 if plan.liger else s.norms_per_layer * 4 * s.hidden_size)
    if plan.lora_params and not plan.fused_lora:
        layer += d * plan.lora_inputs
    tokens = plan.micro_batch * plan.seq_len
    logits = _loss_bytes(plan, tokens, d)
    if plan.checkpointing:
        # Each layer's input is kept (with offloading, in host memory: about two layers' worth
        # is on the GPU, in flight); in backward one layer at a time is recomputed, after the
        # loss buffers are gone.
        # With the post-attention residual saved too, two tensors a layer are in flight.
        kept = (4 if plan.save_middle else 2) if plan.offload else s.num_hidden_layers
        stored = tokens * kept * a * s.hidden_size
        activations = in_backward = stored + tokens * layer
        if four_bit and plan.save_middle and host_bound(tokens, per_layer):
            in_backward += per_layer * d  # one layer's dequantized weights, kept for its backward
    else:
        activations = stored = in_backward = tokens * s.num_hidden_layers * layer
    # Gradients of earlier micro-batches persist while accumulating; at accumulation 1 they are
    # freed after each optimizer step. Full fine-tuning fills them during the backward, while
    # the last layers' working set still exists.
    live_grads = grads if plan.grad_accum > 1 else 0.0
    in_backward += grads if plan.method == "full" else live_grads
    peak = weights + trainable + optim + max(stored + logits + live_grads, in_backward, grads)
    graphs = 0.0
    if plan.checkpointing and _graphed(plan, tokens, per_layer):
        # Static inputs and outputs (4 tensors of a layer's hidden states) and the trained
        # parameters' static gradients live all run; the graphs' own pool keeps one layer's
        # recompute and backward working memory apart from the caching allocator's.
        graphs = 4 * tokens * s.hidden_size * a + grads + tokens * layer
        peak += graphs
    base = CUDA_CONTEXT_GIB if plan.gpu else CPU_BASELINE_GIB
    overhead = base + SLACK * peak / GIB
    g = [x / GIB for x in (weights, trainable, grads, optim, activations, logits, graphs)]
    return Memory(*(round(x, 3) for x in (*g, overhead, peak / GIB + overhead)))


def _graphed(plan: Plan, tokens: int, layer_weights: int) -> bool:
    if plan.cuda_graphs is None:
        return host_bound(tokens, layer_weights)
    return plan.cuda_graphs


def _loss_bytes(plan: Plan, tokens: int, d: int) -> float:
    """The loss's buffers, following engine.speed.loss: the plain path materialises the logits with
    their fp32 copy, log-softmax and gradient (12 B per vocabulary entry per token); the
    chunked paths hold one chunk of them, plus the gathered hidden states (and, for a frozen
    head, their gradient, computed in the forward)."""
    s = plan.shape
    if s.architecture.removesuffix("ForCausalLM").lower() not in CHUNKABLE:
        return tokens * s.vocab_size * 12.0
    hidden = tokens * s.hidden_size * d
    if plan.method == "full":  # the head trains: checkpointed chunks
        return min(tokens, chunk_rows(s.vocab_size)) * s.vocab_size * 12.0 + hidden
    if plan.liger:
        # Liger's chunk: the next power of two of tokens / ceil(V / h) rows, 16-bit logits that
        # its kernel overwrites with their gradient.
        ratio = -(-s.vocab_size // s.hidden_size)
        rows = min(tokens, 2 ** math.ceil(math.log2(max(1, -(-tokens // ratio)))))
        return rows * s.vocab_size * 2.0 + 2 * hidden
    # FrozenHeadLoss: 16-bit logits, their fp32 copy and softmax in place, tanh for a soft cap.
    return min(tokens, chunk_rows(s.vocab_size)) * s.vocab_size * 10.0 + 2 * hidden


def step_flops(plan: Plan, seq_len: float | None = None) -> float:
    """FLOPs of one optimizer step (every micro-batch), recomputation included."""
    seq = seq_len or plan.seq_len
    per_token = plan.shape.flops_per_token(
        seq, full=plan.method == "full", lora_params=plan.lora_params, recompute=plan.checkpointing
    )
    return per_token * plan.micro_batch * seq * plan.grad_accum


def step_time(plan: Plan, seq_len: float | None = None) -> tuple[float, float]:
    """(seconds per optimizer step, assumed MFU)."""
    rate, mfu = training_flops(plan.gpu)
    if plan.gpu is None:  # the CPU rate was measured end to end: nothing to add
        return step_flops(plan, seq_len) / rate, mfu
    s = plan.shape
    # Smaller matmuls run further from the card's peak: fitted to finetty's graphed LoRA rows
    # at 8 x 2048 (devT), Qwen2.5-0.5B (hidden 896) reaches 0.62x the rate per FLOP of
    # Llama-3.1-8B (hidden 4096).
    share = min(1.0, s.hidden_size / MATMUL_FULL_HIDDEN) ** MATMUL_EXPONENT
    rate, mfu = rate * share, mfu * share
    seconds = step_flops(plan, seq_len) / rate
    tokens = plan.micro_batch * (seq_len or plan.seq_len)
    layer_weights = s.linear_param_count() // s.num_hidden_layers
    graphed = plan.checkpointing and _graphed(plan, tokens, layer_weights)
    per_layer = LAYER_HOST_S[(plan.quant in ("nf4", "fp4", "int8"), graphed)]
    if plan.method == "full":
        per_layer *= FULL_HOST_SHARE
    if not plan.checkpointing:
        per_layer *= 2 / 3
    seconds += per_layer * s.num_hidden_layers * plan.grad_accum
    trainable = s.param_count() if plan.method == "full" else plan.lora_params
    bandwidth = plan.gpu.bandwidth_gbs * 1e9
    seconds += trainable * 24 / bandwidth  # optimizer step: read+write weights, grads, 2 states
    return seconds, mfu


def capacity_gib(gpu: GpuSpec | None) -> float:
    return gpu.memory_gib if gpu else round(psutil.virtual_memory().total / GIB, 1)


def recommend_micro_batch(preset: Preset, gpu: GpuSpec | None) -> tuple[int, int] | None:
    """(micro-batch, accumulation) of the largest micro-batch that fits; None if 1 doesn't.

    An explicit micro-batch is the ceiling and the global batch is kept by raising accumulation;
    with ``auto`` the accumulation stays as written.
    """
    return _recommend(make_plan(preset, gpu), preset.training.per_device_train_batch_size)


def _recommend(plan: Plan, asked: int | str) -> tuple[int, int] | None:
    ceiling = asked if isinstance(asked, int) else 64
    global_batch = ceiling * plan.grad_accum if isinstance(asked, int) else None
    best, capacity = None, capacity_gib(plan.gpu)
    for micro in (m for m in BATCH_CANDIDATES if m <= ceiling):
        accum = math.ceil(global_batch / micro) if global_batch else plan.grad_accum
        if memory(replace(plan, micro_batch=micro, grad_accum=accum)).total > capacity:
            break
        best = (micro, accum)
    return best


def estimate(
    preset: Preset,
    gpu: GpuSpec | None,
    hourly_price: float | None = None,
    dataset_tokens: int | None = None,
    *,
    dataset_rows: int | None = None,
    lengths: DatasetLengths | None = None,
) -> Estimate:
    """Memory, fit, batch advice, step time, steps, ETA and cost of a preset on a device.

    ``gpu`` None (or ``training.use_cpu``) is a CPU run, sized against system RAM. With
    ``lengths`` (engine.plan.token_lengths) memory is sized for the longest row and time for the
    micro-batches' padded rows; without, every row is taken to be max_seq_length long.
    """
    gpu = gpu if uses_gpu(preset, gpu_present=gpu is not None) else None
    longest = max(lengths.train_lengths, default=0) if lengths else 0
    plan = make_plan(preset, gpu, seq_len=longest or None)
    asked = preset.training.per_device_train_batch_size
    recommended = _recommend(plan, asked)
    notes: list[str] = []
    if auto_micro_batch(preset):
        micro = micro_batch(preset, lambda: recommended)
        plan = replace(plan, micro_batch=micro)
        notes.append(f"per_device_train_batch_size: auto -> {micro}")
    mem = memory(plan)
    capacity = capacity_gib(gpu)
    fits = mem.total <= capacity
    needs_gc = needs_q = False
    advice: list[str] = []
    if not fits and recommended and recommended[0] < plan.micro_batch:
        micro, accum = recommended
        advice.append(f"use micro-batch {micro} x {accum} accumulation (same global batch)")
    elif not fits:
        needs_gc = not plan.checkpointing and _fits_at_1(replace(plan, checkpointing=True))
        lora = _as_adapter(plan, preset, "lora")
        if needs_gc:
            advice.append("turn on training.gradient_checkpointing (~25% slower)")
        elif plan.method == "full" and _fits_at_1(lora):
            advice.append(
                "use method: lora (adapters on a 16-bit base) with gradient checkpointing"
            )
        elif plan.quant == "none" and _fits_at_1(_as_adapter(plan, preset, "qlora")):
            needs_q = True
            advice.append("use method: qlora (4-bit base) with gradient checkpointing")
        else:
            advice.append(
                "too big even at micro-batch 1: lower model.max_seq_length, "
                "pick a smaller model or a bigger GPU"
            )
    elif plan.checkpointing and memory(replace(plan, checkpointing=False)).total <= capacity:
        advice.append("fits without gradient checkpointing: turning it off is ~25% faster")

    seq_eff: float = plan.seq_len
    if lengths and lengths.train_lengths:
        seq_eff = padded_width(lengths.train_lengths, plan.micro_batch, preset.training.seed)
    elif dataset_tokens and dataset_rows and not preset.dataset.packing:
        seq_eff = max(1, min(plan.seq_len, dataset_tokens // dataset_rows))
    seconds, mfu = step_time(plan, seq_eff)
    if lengths:
        steps = _measured_steps(preset, plan, lengths.train_sequences)
    else:
        steps = _total_steps(preset, plan, dataset_tokens, dataset_rows)
    eta = seconds * steps if steps else None
    cost = eta / 3600 * hourly_price if (eta is not None and hourly_price is not None) else None
    if gpu is None:
        notes.append(
            f"CPU run: memory is RAM; speed {CPU_TRAINING_SHARE:.0%} of this CPU's float32 "
            f"matmul rate ({cpu_matmul_flops() / 1e9:.0f} GFLOP/s, measured now)"
        )
    elif plan.dtype == "bfloat16" and not gpu.bf16:
        notes.append(f"{gpu.name} has no bf16: use model.dtype auto (fp16)")
    if plan.quant != "none" and plan.method != "full" and not plan.checkpointing:
        notes.append("QLoRA without gradient checkpointing keeps fp32 activations (2x LoRA's)")
    if plan.optim.startswith("paged"):
        notes.append("paged optimizer: its states can spill to CPU RAM instead of OOM")
    if lengths:
        sampled = f"the first {lengths.measured_rows:,} of " if lengths.sampled else ""
        notes.append(
            f"token lengths measured on {sampled}{lengths.rows:,} rows: longest "
            f"{lengths.longest}, micro-batches padded to {seq_eff:.0f} on average"
        )
    elif preset.dataset.packing:
        notes.append(
            f"dataset not measured here: rows packed to max_seq_length ({plan.seq_len}) tokens"
        )
    else:
        notes.append(
            "dataset not measured here: every row is taken to be max_seq_length "
            f"({plan.seq_len}) tokens long (an upper bound)"
        )
    if steps is None:
        notes.append("total steps unknown until the dataset is read (or set max_steps)")
    if reads_pairs(preset):
        # Sized as SFT is: a preference run's own shapes are not modelled yet.
        notes.append(
            f"task {preset.task}: each example is two sequences (chosen and rejected, or "
            "KTO's completion and KL sequence), so memory and time run up to 2x this "
            "estimate; dpo and kto also score the reference once before the first step"
        )
    lora = preset.lora
    trainable, total = plan.shape.trainable_split(plan.method, lora.r, lora.target_modules)
    return Estimate(
        preset=preset.name,
        model=preset.model.name_or_path,
        architecture=plan.shape.architecture,
        device=gpu.name if gpu else "cpu",
        on_gpu=gpu is not None,
        capacity_gib=capacity,
        method=plan.method,
        dtype=plan.dtype,
        quantization=plan.quant,
        params_model=plan.shape.param_count(),
        params_total=total,
        params_trainable=trainable,
        micro_batch=plan.micro_batch,
        grad_accum=plan.grad_accum,
        seq_len=plan.seq_len,
        gradient_checkpointing=plan.checkpointing,
        optim=plan.optim,
        memory=mem,
        fits=fits,
        headroom_gib=round(capacity - mem.total, 2),
        recommended_micro_batch=recommended[0] if recommended else None,
        recommended_grad_accum=recommended[1] if recommended else None,
        needs_gradient_checkpointing=needs_gc,
        needs_qlora=needs_q,
        tokens_per_step=round(plan.micro_batch * plan.grad_accum * seq_eff),
        flops_per_step=step_flops(plan, seq_eff),
        mfu=mfu,
        step_time_s=round(seconds, 3),
        total_steps=steps,
        eta_s=round(eta, 1) if eta is not None else None,
        hourly_price=hourly_price,
        cost_usd=round(cost, 2) if cost is not None else None,
        advice=tuple(advice),
        notes=tuple(notes),
        max_seq_length=preset.model.max_seq_length,
        lengths="measured" if lengths else "max_seq_length",
        mean_tokens=round(seq_eff, 1) if lengths else None,
    )


def estimate_for(
    preset: Preset, gpu: GpuSpec | None, hourly_price: float | None = None
) -> Estimate:
    """The estimate every front-end shows (`finetty estimate`, the wizard's fit line, the review
    screen, the probe's prediction): the dataset's real token lengths where they can be measured
    offline (engine.plan.token_lengths), else max_seq_length."""
    return estimate(preset, gpu, hourly_price, lengths=measure(preset))


def _fits_at_1(plan: Plan) -> bool:
    return memory(replace(plan, micro_batch=1)).total <= capacity_gib(plan.gpu)


def _adapted_inputs(shape: ModelShape, targets: str | list[str]) -> int:
    """Summed in_features of the adapted projections in one layer."""
    dims = shape.module_dims()
    return sum(dims[name][0] for name in shape.targeted_modules(targets) if name in dims)


def _as_adapter(plan: Plan, preset: Preset, method: str) -> Plan:
    shape, lora = plan.shape, preset.lora
    quant = "nf4" if method == "qlora" else "none"
    return replace(
        plan,
        method=method,
        quant=quant,
        checkpointing=True,
        lora_params=shape.lora_param_count(lora.r, lora.target_modules),
        lora_inputs=_adapted_inputs(shape, lora.target_modules),
    )


def _measured_steps(preset: Preset, plan: Plan, sequences: int) -> int:
    """Optimizer steps of the run, counted as engine.train.trainer counts them."""
    training = preset.training
    return run_steps(
        sequences,
        micro_batch=plan.micro_batch,
        grad_accum=plan.grad_accum,
        epochs=training.num_train_epochs,
        max_steps=training.max_steps,
    )


def _total_steps(preset: Preset, plan: Plan, tokens: int | None, rows: int | None) -> int | None:
    """Optimizer steps from the dataset's token and row counts; None when neither is known
    and max_steps is unset."""
    sequences = _train_sequences(preset, plan, tokens, rows)
    if sequences is None and preset.training.max_steps <= 0:
        return None
    return _measured_steps(preset, plan, max(sequences or 0, 1))


def _train_sequences(
    preset: Preset, plan: Plan, tokens: int | None, rows: int | None
) -> int | None:
    """Training sequences after max_rows and the validation split; None when unknown."""
    dataset = preset.dataset
    if dataset.packing and tokens:
        sequences = math.ceil(tokens / plan.seq_len)
    elif rows:
        sequences = rows
    elif tokens:
        sequences = math.ceil(tokens / plan.seq_len)  # rows unknown: as if packed
    else:
        return None
    if dataset.max_rows and not dataset.packing:
        sequences = min(sequences, dataset.max_rows)
    val = dataset.val_size
    return sequences - (int(val) if val >= 1 else int(sequences * val))


def format_estimate(e: Estimate) -> str:
    """A compact table for a terminal (under 80 columns)."""
    where = f"{e.device} ({e.capacity_gib:g} GiB)" if e.on_gpu else "the CPU"
    quant = "" if e.quantization == "none" else f"{e.quantization}, "
    m = e.memory
    lines = [
        f"{e.preset} on {where}",
        f"  model    {e.model}  ({e.architecture}, {count(e.params_model)} params)",
        f"  method   {e.method} ({quant}{e.dtype}), trainable {count(e.params_trainable)} of "
        f"{count(e.params_total)} ({share(e.params_trainable, e.params_total)}), {e.optim}",
        f"  batch    {e.micro_batch} x {e.grad_accum} accum x {e.seq_len} tokens "
        + (
            f"(longest row; max_seq_length {e.max_seq_length})"
            if e.lengths == "measured"
            else "(max_seq_length)"
        ),
        f"           gradient checkpointing {'on' if e.gradient_checkpointing else 'off'}",
        "",
        f"  Memory, GiB {'(GPU)' if e.on_gpu else '(RAM)'}",
    ]
    rows = [
        ("weights", m.weights),
        ("trainable params", m.trainable),
        ("gradients", m.gradients),
        ("optimizer states", m.optimizer),
        ("activations", m.activations),
        ("logits and loss", m.logits),
        *([("CUDA graphs", m.cuda_graphs)] if m.cuda_graphs else []),
        ("CUDA context, slack" if e.on_gpu else "process, slack", m.overhead),
    ]
    lines += [f"    {label:<20}{value:>8.1f}" for label, value in rows]
    free = abs(e.headroom_gib)
    verdict = f"fits, {free:.1f} free" if e.fits else f"DOES NOT FIT, {free:.1f} over"
    lines += [f"    {'peak':<20}{m.total:>8.1f}  of {e.capacity_gib:g}: {verdict}", ""]
    if e.recommended_micro_batch and e.recommended_micro_batch != e.micro_batch:
        lines.append(
            f"  largest micro-batch that fits: {e.recommended_micro_batch} "
            f"(x {e.recommended_grad_accum} accum)"
        )
    speed = f"{e.flops_per_step / 1e12:.1f} TFLOP/step"
    speed += f" at {e.mfu:.0%} MFU" if e.on_gpu else ""
    lines.append(f"  Time     ~{e.step_time_s:.2f} s/step ({speed})")
    if e.total_steps is not None and e.eta_s is not None:
        cost = f", ${e.cost_usd:.2f} at ${e.hourly_price:g}/h" if e.cost_usd is not None else ""
        lines.append(f"           {e.total_steps} steps, ETA {duration(e.eta_s)}{cost}")
    for label, texts in (("advice", e.advice), ("note", e.notes)):
        for text in texts:
            lines += textwrap.wrap(
                text, 80, initial_indent=f"  {label:<9}", subsequent_indent=" " * 11
            )
    return "\n".join(lines)

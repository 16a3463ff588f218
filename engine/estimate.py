"""Peak memory and step time of a preset on a GPU (or the CPU), without loading the model.

Numbers are bytes per parameter and per token, from the model's shape. The terms, and where
they come from, are documented where they are computed. No torch, transformers or peft here:
`finetty estimate` must answer in well under a second.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import psutil

from engine.config import Preset
from engine.gpus import GpuSpec
from engine.shapes import ModelShape, shape_for

GIB = 2**30
CUDA_CONTEXT_GIB = 0.5  # CUDA context, cuBLAS workspaces: outside torch's allocator
CPU_BASELINE_GIB = 1.0  # Python + torch + transformers + trl resident before the model loads
SLACK = 0.05  # allocator fragmentation and short-lived temporaries, on top of the sum
GPU_MFU = 0.35  # model FLOPs utilisation assumed on a GPU (HF + SDPA, no fused kernels)
CPU_GFLOPS_PER_CORE = 35.0  # effective fp32 training rate, measured: SmolLM2 LoRA/full on 2 cores
BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128)
OPTIM_BYTES = {"paged_adamw_32bit": 8.0, "adamw_8bit": 2 * (1 + 4 / 256),
               "paged_adamw_8bit": 2 * (1 + 4 / 256)}  # others: 2 states in the param dtype


@dataclass(frozen=True)
class Memory:
    """Peak memory terms in GiB; ``total`` is the peak, not always their plain sum."""

    weights: float
    trainable: float  # LoRA adapters (fp32); 0 for full fine-tuning, whose weights are trainable
    gradients: float
    optimizer: float
    activations: float
    logits: float  # logits and the cross-entropy buffers
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
    params_total: int
    params_trainable: int
    micro_batch: int
    grad_accum: int
    seq_len: int
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


def make_plan(preset: Preset, gpu: GpuSpec | None, micro_batch: int | None = None) -> Plan:
    shape = shape_for(preset.model.name_or_path)
    model, training, lora = preset.model, preset.training, preset.lora
    dtype = model.dtype
    if dtype == "auto":
        dtype = "float32" if gpu is None else ("bfloat16" if gpu.bf16 else "float16")
    quant = "none"
    if preset.method == "qlora" or model.load_in_4bit:
        quant = model.bnb_4bit_quant_type
    elif model.load_in_8bit:
        quant = "int8"
    lora_params = lora_inputs = 0
    if preset.uses_adapter:
        lora_params = shape.lora_param_count(lora.r, lora.target_modules)
        dims = shape.module_dims()
        lora_inputs = sum(dims[m][0] for m in shape.targeted_modules(lora.target_modules) if m in dims)
    micro = micro_batch or training.per_device_train_batch_size
    return Plan(shape, preset.method, quant, model.bnb_4bit_use_double_quant, dtype,
                micro if isinstance(micro, int) else 1, training.gradient_accumulation_steps,
                model.max_seq_length, training.gradient_checkpointing, training.optim,
                lora_params, lora_inputs, gpu)  # fmt: skip


def memory(plan: Plan) -> Memory:
    """The peak-memory model (GiB), following what engine.models/adapters/trainer allocate."""
    s, n, n_lin = plan.shape, plan.shape.param_count(), plan.shape.linear_param_count()
    d = 4 if plan.dtype == "float32" else 2
    four_bit = plan.quant in ("nf4", "fp4")
    # Full fine-tuning in fp16 keeps fp32 master weights (AMP); bf16 and fp32 train in place.
    weight_bytes = 4 if (plan.method == "full" and plan.dtype == "float16") else d
    # PEFT's prepare_model_for_kbit_training upcasts every non-quantized weight to fp32, which
    # also makes the residual stream and the logits fp32.
    rest = 4 if plan.quant != "none" else d
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
    # of its input (4h) and its output feeds the projections (r*h, r = residual bytes).
    # Adapted modules add a copy of their input each: fp32 for PEFT's fp32 adapters on a 16-bit
    # base, the compute dtype for bitsandbytes' cast of the fp32 stream under QLoRA.
    r = rest if plan.method != "full" else d
    attention = r * s.hidden_size + d * (3 * s.q_dim + 2 * s.kv_dim)
    mlp = r * s.hidden_size + d * 4 * s.intermediate_size
    layer = attention + mlp + s.norms_per_layer * 4 * s.hidden_size
    if plan.lora_params and plan.quant != "none":
        layer += d * plan.lora_inputs
    elif plan.lora_params and d == 2:
        layer += 4 * plan.lora_inputs
    tokens = plan.micro_batch * plan.seq_len
    if plan.checkpointing:  # keep each layer's input; recompute one layer at a time in backward
        activations = tokens * (s.num_hidden_layers * r * s.hidden_size + layer)
    else:
        activations = tokens * s.num_hidden_layers * layer
    # Logits (fp32 under QLoRA), the fp32 copy the loss takes and its fp32 gradient
    # (the copy is the logits themselves when they are fp32, but log-softmax saves its output).
    logits = tokens * s.vocab_size * (r + 8)

    # Gradients and activations only coexist while accumulating; at accumulation 1 the grads
    # are freed after each optimizer step, and the optimizer's states persist.
    live_grads = grads if plan.grad_accum > 1 else 0.0
    peak = weights + trainable + optim + max(activations + logits + live_grads, grads)
    base = CUDA_CONTEXT_GIB if plan.gpu else CPU_BASELINE_GIB
    overhead = base + SLACK * peak / GIB
    g = [x / GIB for x in (weights, trainable, grads, optim, activations, logits)]
    return Memory(*(round(x, 3) for x in (*g, overhead, peak / GIB + overhead)))


def step_flops(plan: Plan, seq_len: int | None = None) -> float:
    """FLOPs of one optimizer step (all micro-batches), counting recomputation.

    Per token: full fine-tuning 6N (Kaplan et al. 2020: forward 2N, backward 4N); a frozen base
    with adapters 4N (no weight gradients) + 6 per adapter weight; causal attention adds
    6*L*s*d_q (forward 2, backward 4); gradient checkpointing repeats the forward (2N + 2*L*s*d_q).
    N counts the matmul weights: the projections and lm_head (tied or not), not the lookup.
    """
    s = plan.shape
    seq = seq_len or plan.seq_len
    n_mm = s.linear_param_count() + s.vocab_size * s.hidden_size
    attn = 2 * s.num_hidden_layers * seq * s.q_dim
    per_token = (6 * n_mm if plan.method == "full" else 4 * n_mm + 6 * plan.lora_params) + 3 * attn
    if plan.checkpointing:
        per_token += 2 * n_mm + attn
    return per_token * plan.micro_batch * seq * plan.grad_accum


def step_time(plan: Plan, seq_len: int | None = None) -> tuple[float, float]:
    """(seconds per optimizer step, assumed MFU); memory-bound extras use the bandwidth."""
    flops = step_flops(plan, seq_len)
    if plan.gpu is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return flops / ((cores or 1) * CPU_GFLOPS_PER_CORE * 1e9), 1.0
    seconds = flops / (plan.gpu.tflops * 1e12 * GPU_MFU)
    bandwidth = plan.gpu.bandwidth_gbs * 1e9
    if plan.quant != "none":  # dequantize every weight per pass: read 4/8-bit, write+read bf16
        passes = 3 if plan.checkpointing else 2
        seconds += plan.grad_accum * passes * plan.shape.linear_param_count() * 4.5 / bandwidth
    trainable = plan.shape.param_count() if plan.method == "full" else plan.lora_params
    seconds += trainable * 24 / bandwidth  # optimizer step: read+write weights, grads, 2 states
    return seconds, GPU_MFU


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
    best = None
    for micro in (m for m in BATCH_CANDIDATES if m <= ceiling):
        accum = math.ceil(global_batch / micro) if global_batch else plan.grad_accum
        if memory(replace(plan, micro_batch=micro, grad_accum=accum)).total > capacity_gib(plan.gpu):
            break
        best = (micro, accum)
    return best

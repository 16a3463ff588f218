"""Every rule that turns a preset into a run's settings, each decided once.

The run (engine.train.run), the estimator (engine.plan.estimate), the fit probe, export and the
multi-GPU launcher all ask these functions, so that what an estimate assumes and what a run
does cannot drift apart. Each is a pure function of the preset and a few facts of the machine
(a GPU present, its bf16 support, several processes), passed in: nothing here looks at the
hardware, and nothing imports torch (dtypes are named by their torch attribute, "bfloat16").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.config.preference import PREFERENCE_TASKS

if TYPE_CHECKING:
    from engine.config.schema import ModelSection, Preset

# per_device_train_batch_size auto without a GPU: there is no card to size against, and the
# CPU's RAM is rarely what limits a CPU run (its speed is).
CPU_AUTO_MICRO_BATCH = 8


@dataclass(frozen=True)
class TrainSettings:
    micro_batch: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    scheduler: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1
    optim: str = "adamw_torch"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    eval_steps: int | None = None
    eval_batch: int = 8
    save_steps: int = 200
    save_total_limit: int | None = 3
    seed: int = 0
    device: str = "cpu"
    amp_dtype: Any = None  # autocast dtype when weights stay in fp32 (fp16 on old GPUs)
    use_grad_scaler: bool = False
    pad_token_id: int = 0
    auto_batch: bool = False  # halve the micro-batch on out-of-memory, keeping the global batch
    chunked_loss: bool = True  # never materialise the full logits (same function, less memory)
    sharded: bool = False  # FSDP2 over the ranks (full fine-tuning on several GPUs)
    defer_metrics: bool | None = None  # read each step's loss a step late; unset: on one GPU


def train_settings(
    preset: Preset,
    *,
    micro_batch: int,
    device: str,
    amp_dtype: Any,
    use_grad_scaler: bool,
    pad_token_id: int,
    sharded: bool,
) -> TrainSettings:
    """The trainer's settings: the preset's training section, plus what only the run knows
    (the resolved micro-batch, the device, the autocast dtype as a torch object, the
    tokenizer's pad id, whether the weights are sharded)."""
    t = preset.training
    return TrainSettings(
        micro_batch=micro_batch,
        auto_batch=auto_micro_batch(preset),
        grad_accum=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        scheduler=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        warmup_ratio=t.warmup_ratio,
        epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        optim=t.optim,
        weight_decay=t.weight_decay,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        eval_steps=t.eval_steps,
        eval_batch=t.per_device_eval_batch_size,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        device=device,
        amp_dtype=amp_dtype,
        use_grad_scaler=use_grad_scaler,
        pad_token_id=pad_token_id,
        sharded=sharded,
    )


@dataclass(frozen=True)
class ModelLoad:
    """What the loader needs of the preset (engine.models.loading.load_preset_model)."""

    name_or_path: str
    quant_bits: int | None  # 4, 8, or None for 16/32-bit weights
    quant_type: str  # nf4 | fp4, for 4 bits
    double_quant: bool
    dtype: str  # as asked: auto | bfloat16 | float16 | float32 (compute_dtype resolves auto)
    attention: str  # as asked: auto or a transformers attn_implementation
    revision: str | None
    trust_remote_code: bool
    allow_pickle: bool


def quant_bits(model: ModelSection) -> int | None:
    """4 or 8 for a bitsandbytes-quantized base, None otherwise (method qlora sets 4 bits: the
    schema fills load_in_4bit in for it)."""
    return 4 if model.load_in_4bit else 8 if model.load_in_8bit else None


def quantization(model: ModelSection) -> str:
    """The base weights' storage as the estimator names it: none, nf4, fp4 or int8."""
    bits = quant_bits(model)
    return "none" if bits is None else model.bnb_4bit_quant_type if bits == 4 else "int8"


def model_load(preset: Preset) -> ModelLoad:
    """The loader's arguments for the preset's base model."""
    m = preset.model
    return ModelLoad(
        name_or_path=m.name_or_path,
        quant_bits=quant_bits(m),
        quant_type=m.bnb_4bit_quant_type,
        double_quant=m.bnb_4bit_use_double_quant,
        dtype=m.dtype,
        attention=m.attn_implementation,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
        allow_pickle=m.allow_pickle_weights,
    )


def dataset_prep(preset: Preset) -> dict[str, Any]:
    """engine.data.prepare_dataset's keyword arguments for the preset, bar the tokenizer and
    the rows themselves."""
    d = preset.dataset
    return {
        "path": d.path,
        "split": d.split,
        "fmt": d.format,
        "chat_template": d.chat_template,
        "train_on": d.train_on,
        "max_length": preset.model.max_seq_length,
        "packing": d.packing,
        "val_size": d.val_size,
        "seed": preset.training.seed,
        "max_rows": d.max_rows,
    }


# The tasks that validate (their sections are checked) but that this build cannot train yet,
# with why: refused at validation, because running them would silently train something else.
UNTRAINABLE_TASKS: dict[str, str] = {}


def untrainable_reason(task: str) -> str | None:
    """Why this build cannot train ``task``, or None where it can."""
    return UNTRAINABLE_TASKS.get(task)


def reads_pairs(preset: Preset) -> bool:
    """Whether the run trains on preference pairs (dpo, orpo, simpo, kto) rather than SFT rows."""
    return preset.task in PREFERENCE_TASKS


def pair_prep(preset: Preset) -> dict[str, Any]:
    """engine.data.prepare_preference's keyword arguments: load_pairs's (``load``) and
    prepare_pairs's (``prepare``), bar the tokenizer and the rows."""
    d, pref = preset.dataset, preset.preference
    return {
        "load": {"path": d.path, "split": d.split, "task": preset.task, "max_rows": d.max_rows},
        "prepare": {
            "path": d.path,
            "task": preset.task,
            "chat_template": d.chat_template,
            "max_length": preset.model.max_seq_length,
            "val_size": d.val_size,
            "seed": preset.training.seed,
            "max_prompt_length": pref.max_prompt_length,
            "max_completion_length": pref.max_completion_length,
        },
    }


def reference_weights(preset: Preset) -> dict[str, Any]:
    """What decides the reference log-probs besides the pairs themselves: the starting
    weights (base model, how it loads, the adapter's shape and seed) and how a side's
    log-probs are summed (LD-DPO's ld_alpha). The reference cache's digest covers these."""
    return {
        "model": preset.model.model_dump(mode="json"),
        "method": preset.method,
        "lora": preset.lora.model_dump(mode="json"),
        "seed": preset.training.seed,
        "ld_alpha": preset.preference.ld_alpha,
    }


METHOD_LABELS = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
TASK_NAMES = {"sft": "SFT", "dpo": "DPO", "orpo": "ORPO", "kto": "KTO", "simpo": "SimPO"}


def task_label(preset: Preset) -> str:
    """What the run learns, in words: "SFT · LoRA", "DPO (sigmoid, beta 0.1) · LoRA"."""
    name = TASK_NAMES.get(preset.task, preset.task.upper())
    if reads_pairs(preset):
        types = ", ".join(preset.preference.loss_types(preset.task))
        name += f" ({types}, beta {preset.preference.beta:g})"
    return f"{name} · {METHOD_LABELS[preset.method]}"


def uses_gpu(preset: Preset, *, gpu_present: bool) -> bool:
    """Whether the run trains on a GPU: one is present and training.use_cpu is off."""
    return gpu_present and not preset.training.use_cpu


def compute_dtype(requested: str, *, cuda: bool, bf16: Callable[[], bool]) -> str:
    """model.dtype resolved: as written, or for auto bfloat16 on a GPU with native bf16
    (``bf16``, asked only then), float16 on an older GPU (with loss scaling) and float32 on the
    CPU, where bf16 matmuls ran ~2.5x slower than fp32 (measured)."""
    if requested != "auto":
        return requested
    if not cuda:
        return "float32"
    return "bfloat16" if bf16() else "float16"


@dataclass(frozen=True)
class Precision:
    weights: str  # the dtype the weights load in
    autocast: str | None  # the dtype autocast runs the matmuls in, None for no autocast
    grad_scaler: bool  # fp16 on a GPU: the loss is scaled against gradient underflow

    @property
    def label(self) -> str:
        """As the run_started event names it: ``bfloat16``, ``float16 with loss scaling``."""
        text = self.autocast or self.weights
        return text + " with loss scaling" if self.grad_scaler else text


def uses_adapter(method: str) -> bool:
    """Whether ``method`` trains LoRA adapters (lora, qlora) rather than every weight (full)."""
    return method in ("lora", "qlora")


def precision(method: str, dtype: str, *, cuda: bool) -> Precision:
    """How a run of ``method`` in compute ``dtype`` (compute_dtype) keeps its weights and runs
    its matmuls.

    Full fine-tuning in fp16 on a GPU keeps fp32 master weights under fp16 autocast; adapters
    on a 16-bit base run under autocast too, since PEFT keeps them in fp32 and autocast runs
    their matmuls in 16 bits. Everything else, the CPU included, runs in ``dtype`` itself."""
    weights, autocast = dtype, None
    if cuda and dtype == "float16" and method == "full":
        weights, autocast = "float32", "float16"
    elif cuda and dtype != "float32" and uses_adapter(method):
        autocast = dtype
    return Precision(weights, autocast, grad_scaler=cuda and dtype == "float16")


def uses_fsdp(preset: Preset) -> bool:
    """Whether a run of this preset on several processes shards its weights (FSDP2); LoRA and
    QLoRA use DDP."""
    return preset.method == "full" and preset.training.fsdp is not False


def graphs_wanted(
    cuda_graphs: bool | None, *, cuda: bool, uses_adapter: bool, distributed: bool = False
) -> bool | None:
    """training.cuda_graphs resolved for a run: True always, None where a layer call is
    host-bound (engine.plan.graph_work), False never. Only on a CUDA device in one process: DDP's
    gradient hooks need autograd's own accumulation (engine.speed.layer_graphs). Unset means
    adapters only: full fine-tuning's graphs would hold a static gradient of every weight (a
    second copy of the gradients), and that path was not measured with them."""
    if not cuda or distributed:
        return False
    if cuda_graphs is None and not uses_adapter:
        return False
    return cuda_graphs


def offload_activations(activation_offloading: bool | None, *, cuda: bool) -> bool:
    """training.activation_offloading resolved (with gradient checkpointing): host memory is
    only "elsewhere" for a GPU, and unset means on there."""
    return cuda and activation_offloading is not False


def auto_micro_batch(preset: Preset) -> bool:
    """per_device_train_batch_size: auto, whose size out-of-memory may halve later."""
    return preset.training.per_device_train_batch_size == "auto"


def micro_batch(
    preset: Preset, recommend: Callable[[], tuple[int, int] | None] | None = None
) -> int:
    """per_device_train_batch_size resolved: as written; auto, the largest micro-batch that
    ``recommend`` (engine.plan.estimate.recommend_micro_batch) says fits, 1 where none does, and
    CPU_AUTO_MICRO_BATCH without ``recommend`` (no GPU to size against)."""
    asked = preset.training.per_device_train_batch_size
    if asked != "auto":
        return int(asked)
    if recommend is None:
        return CPU_AUTO_MICRO_BATCH
    best = recommend()
    return best[0] if best else 1

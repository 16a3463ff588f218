"""The preset schema: one section per wizard screen, key names as in from_pretrained, PEFT and TRL.

Each field's docstring is its help text (``use_attribute_docstrings``), shown by the CLI and the
TUI. This module imports no torch: it must stay cheap for ``finetty --help`` and ``estimate``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from engine.config.derived import quant_bits, untrainable_reason, uses_adapter, uses_gpu
from engine.config.grpo import GrpoSection
from engine.config.preference import PREFERENCE_TASKS, PreferenceSection
from engine.config.section import Section

EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"
BUILTIN_DATASET = "builtin:finetty-skills"

# Upper bounds, so that every value that passes validation also survives the arithmetic done
# with it later (step counts, schedules, the estimator's float maths, tensor scales).
MAX_STEPS = 100_000_000
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_ROWS = 1_000_000_000
MAX_LORA_ALPHA = 1e6
MAX_SEQ_LENGTH = 1_048_576

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}


class ModelSection(Section):
    name_or_path: str = EMBEDDED_DEFAULT
    """Hub id, local HF directory, local .gguf file, or "embedded:smollm2-135m-instruct"."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""
    dtype: Dtype = "auto"
    """Compute dtype: auto picks bfloat16 where the GPU supports it, float16 on older GPUs, float32 on CPU."""
    load_in_4bit: bool = False
    """Load the base weights in 4-bit through bitsandbytes (QLoRA). CUDA only."""
    load_in_8bit: bool = False
    """Load the base weights in 8-bit through bitsandbytes. CUDA only."""
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit per weight)."""
    max_seq_length: int = Field(2048, ge=16, le=MAX_SEQ_LENGTH)
    """Longest tokenized example; longer rows are truncated (and counted)."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = (
        "auto"
    )
    """Attention kernel: auto picks flash_attention_2 when installed on a capable GPU, else sdpa;
    packed batches on a GPU then use PyTorch's variable-length flash attention."""
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model. Off unless you trust the repository."""
    allow_pickle_weights: bool = False
    """Allow loading .bin (pickle) weights, which can execute code. Prefer safetensors."""

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, value: object) -> object:
        return _DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("name_or_path")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "must name a model: a hub id, a local path or embedded:smollm2-135m-instruct"
            )
        return value.strip()


class DatasetSection(Section):
    path: str = BUILTIN_DATASET
    """Hub id, local .jsonl/.json/.csv/.parquet file, or "builtin:finetty-skills"."""
    split: str = "train"
    """Split with optional slicing, as in datasets: train, train[:1000], train[10%:20%]."""
    format: Literal["auto", "alpaca", "sharegpt", "messages", "text"] = "auto"
    """Row format; auto detects it from the keys and says what it found."""
    chat_template: str = "auto"
    """auto (the model's own, else chatml), model, or a named template: chatml, llama-3, mistral, gemma, phi-3, zephyr, alpaca."""
    train_on: Literal["responses", "all"] = "responses"
    """responses: loss on assistant tokens only; all: loss on every token."""
    packing: bool = False
    """Pack several examples into each sequence (attention stays within each example)."""
    val_size: float = Field(0.0, ge=0, le=MAX_ROWS)
    """Held-out share for evaluation: a fraction below 1, or a number of rows."""
    max_rows: int | None = Field(None, ge=1, le=MAX_ROWS)
    """Use at most this many rows (after the split slice)."""

    @field_validator("path")
    @classmethod
    def _path_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "must name a dataset: a hub id, a local file or builtin:finetty-skills"
            )
        return value.strip()


class LoraSection(Section):
    r: int = Field(16, ge=1, le=4096)
    """LoRA rank."""
    lora_alpha: float = Field(16, gt=0, le=MAX_LORA_ALPHA)
    """LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA); at most 1e6
    (useful values are far smaller; 1e308 overflowed 32-bit floats)."""
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: str | list[str] = "all-linear"
    """all-linear, or a list of module names such as [q_proj, k_proj, v_proj, o_proj]."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA); slower per step."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases to train."""
    modules_to_save: list[str] | None = None
    """Extra modules trained in full and saved with the adapter (e.g. [lm_head, embed_tokens])."""

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("must not be empty: use all-linear or name the modules")
        return value


Optim = Literal[
    "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd"
]
Scheduler = Literal[
    "linear",
    "cosine",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
]


# The trackers finetty logs to (engine.runs.trackers); TrainingArguments knows more, which are
# refused by name rather than accepted and ignored.
REPORT_TO = ("tensorboard", "wandb", "mlflow")


def report_to_names(value: object) -> object:
    """``report_to`` as a list of names (TrainingArguments takes one name or a list)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return value  # pydantic's own type error names what is wrong
    names = [name.strip().lower() for name in names] or ["none"]
    for name in names:
        if name not in (*REPORT_TO, "all", "none"):
            raise PydanticCustomError(
                "report_to",
                "{name} is not a tracker finetty logs to; use {known}, all or none",
                {"name": name, "known": ", ".join(REPORT_TO)},
            )
    if len(names) > 1 and ({"all", "none"} & set(names)):
        raise PydanticCustomError(
            "report_to", "all and none stand alone; give one of them or a list of trackers"
        )
    return list(dict.fromkeys(names))


class TrainingSection(Section):
    learning_rate: float = Field(2e-4, gt=0, le=1)
    """Peak learning rate."""
    lr_scheduler_type: Scheduler = "linear"
    """Learning-rate schedule after warm-up."""
    per_device_train_batch_size: int | Literal["auto"] = 8
    """Micro-batch size per device; auto finds the largest that fits and keeps the global batch."""
    per_device_eval_batch_size: int = Field(8, ge=1, le=MAX_BATCH)
    """Micro-batch size for evaluation."""
    gradient_accumulation_steps: int = Field(1, ge=1, le=MAX_BATCH)
    """Micro-batches per optimizer step."""
    num_train_epochs: float = Field(1.0, gt=0, le=MAX_EPOCHS)
    """Passes over the training data, at most 10,000 (ignored when max_steps > 0)."""
    max_steps: int = Field(-1, ge=-1, le=MAX_STEPS)
    """Total optimizer steps, at most 100 million; -1 derives them from num_train_epochs."""
    optim: Optim = "adamw_torch"
    """Optimizer; the 8-bit ones need bitsandbytes and CUDA."""
    weight_decay: float = Field(0.0, ge=0, le=1)
    """Decoupled weight decay, 0 to 1 (each step scales weights by 1 - learning_rate * decay)."""
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0, le=1)
    max_grad_norm: float = Field(1.0, ge=0, le=1e6)
    """Gradient clipping norm, at most 1e6; 0 disables clipping."""
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    """Linear warm-up steps (takes precedence over warmup_ratio)."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Warm-up as a share of the total steps."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~20-30% more time."""
    logging_steps: int = Field(1, ge=1, le=MAX_STEPS)
    """Emit a step event every this many optimizer steps."""
    eval_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    """Evaluate on the validation split every this many steps (and at the end)."""
    save_steps: int = Field(200, ge=0, le=MAX_STEPS)
    """Write a resumable checkpoint every this many steps; 0 only at the end and on stop."""
    save_total_limit: int | None = Field(3, ge=1, le=MAX_STEPS)
    """Keep only the newest this many checkpoints."""
    seed: int = Field(0, ge=0, lt=2**32)
    """Seed for data order, LoRA initialisation and dropout."""
    bf16: bool | None = None
    """Accepted for TrainingArguments compatibility; must agree with model.dtype."""
    fp16: bool | None = None
    """Accepted for TrainingArguments compatibility; must agree with model.dtype."""
    use_liger_kernel: bool | None = None
    """Fused Liger kernels (RMSNorm, RoPE, SwiGLU) on CUDA; unset: on when liger-kernel is installed."""
    fused_lora: bool = True
    """Run each plain LoRA projection as one fused function, and q/k/v and gate/up as one
    function each (same result, fewer GPU passes and Python calls)."""
    activation_offloading: bool | None = None
    """With gradient_checkpointing: keep each layer's saved input in host memory until its
    backward; unset: on with a CUDA GPU."""
    cuda_graphs: bool | None = None
    """With gradient_checkpointing on one CUDA GPU: replay each decoder layer's forward and
    backward as CUDA graphs (same results, far fewer kernel launches); unset: on for LoRA and
    QLoRA where a layer call is small enough for the host to be the bottleneck
    (bench/RESULTS.md)."""
    use_cpu: bool = False
    """Train on the CPU even when a GPU is present."""
    fsdp: bool | None = None
    """Several GPUs, method full: shard weights, gradients and optimizer states (FSDP2); unset: on. LoRA/QLoRA use DDP."""
    eval_exact_match: bool = True
    """For datasets with checkable answers (the built-in one), report exact-match before and after."""
    report_to: list[str] = Field(default_factory=lambda: ["none"])
    """Experiment trackers to log to, as in TrainingArguments: tensorboard, wandb, mlflow, a
    list of them, all (those installed) or none; each needs its extra (pip install 'finetty[wandb]')."""

    @field_validator("per_device_train_batch_size")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or auto")
        if isinstance(value, int) and value > MAX_BATCH:
            raise ValueError(f"must be at most {MAX_BATCH:,}, or auto")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to(cls, value: object) -> object:
        return report_to_names(value)


ExportFormat = Literal[
    "adapter",
    "merged_16bit",
    "gguf_f16",
    "gguf_bf16",
    "gguf_q8_0",
    "gguf_q4_k_m",
    "gguf_q5_k_m",
    "gguf_q6_k",
    "gguf_q3_k_m",
    "gguf_q2_k",
]


class ExportSection(Section):
    formats: list[ExportFormat] = Field(default_factory=list)
    """What `finetty export` writes by default after this run."""


class Preset(Section):
    name: str = "run"
    """Name of the run; the run directory is runs/<name>/<timestamp>."""
    description: str | None = None
    """One line shown in `finetty presets`."""
    model: ModelSection = Field(default_factory=ModelSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    method: Literal["full", "lora", "qlora"] = "lora"
    """full: every weight; lora: adapters on a 16-bit base; qlora: adapters on a 4-bit base (CUDA)."""
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    export: ExportSection = Field(default_factory=ExportSection)
    task: Literal["sft", "grpo", "dpo", "orpo", "kto", "simpo"] = "sft"
    """What is learned: sft (from the dataset's replies), grpo (from rewards on sampled
    completions, set in the grpo section), or a preference objective (dpo, orpo, kto, simpo:
    from chosen and rejected responses, set in the preference section). Each trains with the
    weights method picks."""
    grpo: GrpoSection = Field(default_factory=GrpoSection)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        cleaned = value.strip()
        if not cleaned or any(ch in cleaned for ch in "/\\") or cleaned.startswith("."):
            raise ValueError("must be a plain name (no slashes, not starting with a dot)")
        # It names a folder: control characters and over-long names fail only at mkdir.
        if len(cleaned) > 100 or not cleaned.isprintable():
            raise ValueError("must be a plain name of at most 100 printable characters")
        return cleaned

    @field_validator("method", mode="before")
    @classmethod
    def _method_is_the_weights(cls, value: object) -> object:
        # The and TRL's words for objectives, so say where they go.
        if isinstance(value, str) and value in ("grpo", *PREFERENCE_TASKS):
            raise PydanticCustomError(
                "method_is_weights",
                "picks the weights (full, lora or qlora); {name} is set by task: {task} "
                "(for example task: {task} with method: qlora)",
                {"name": value.upper() if value != "simpo" else "SimPO", "task": value},
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _qlora_implies_4bit(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("method") == "qlora":
            model = data.get("model")
            model = dict(model) if isinstance(model, dict) else ({} if model is None else model)
            if (
                isinstance(model, dict)
                and "load_in_4bit" not in model
                and not model.get("load_in_8bit")
            ):
                model["load_in_4bit"] = True
                data = {**data, "model": model}
        return data

    @model_validator(mode="after")
    def _combinations(self) -> Preset:
        # One error per problem, each at the key to change, so that it gets its YAML line.
        problems: list[tuple[tuple[str, ...], str]] = []
        model, training, dataset = self.model, self.training, self.dataset
        if model.load_in_4bit and model.load_in_8bit:
            problems.append(
                (("model", "load_in_8bit"), "load_in_4bit and load_in_8bit: choose one, not both")
            )
        if self.method == "full" and (model.load_in_4bit or model.load_in_8bit):
            problems.append(
                (
                    ("method",),
                    "full cannot train quantized weights; use method: qlora, or turn off load_in_4bit/load_in_8bit",
                )
            )
        if self.method == "lora" and model.load_in_4bit:
            problems.append(
                (("method",), "lora with model.load_in_4bit is QLoRA; set method: qlora")
            )
        if self.method == "qlora" and not model.load_in_4bit:
            problems.append(
                (
                    ("method",),
                    "qlora needs model.load_in_4bit: true (8-bit or 16-bit bases use method: lora)",
                )
            )
        if training.bf16 and training.fp16:
            problems.append((("training", "fp16"), "bf16 and fp16: choose one, not both"))
        if training.bf16 and model.dtype == "float16":
            problems.append((("training", "bf16"), "true contradicts model.dtype: float16"))
        if training.fp16 and model.dtype == "bfloat16":
            problems.append((("training", "fp16"), "true contradicts model.dtype: bfloat16"))
        if dataset.train_on == "responses" and dataset.format == "text":
            problems.append(
                (
                    ("dataset", "train_on"),
                    "responses needs a chat format; plain text has no responses (use train_on: all)",
                )
            )
        if training.eval_steps is not None and dataset.val_size == 0:
            problems.append(
                (("training", "eval_steps"), "needs a validation split: set dataset.val_size")
            )
        if dataset.val_size >= 1 and not dataset.val_size.is_integer():
            problems.append(
                (("dataset", "val_size"), "must be a fraction below 1 or a whole number of rows")
            )
        untrainable = untrainable_reason(self.task)
        if untrainable is not None:
            problems.append((("task",), untrainable))
        problems += self._grpo_problems()
        problems += self._preference_problems()
        if problems:
            raise ValidationError.from_exception_data(
                "Preset",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("combination", message), loc=loc, input=None
                    )
                    for loc, message in problems
                ],
            )
        return self

    def unread_sections(self) -> tuple[str, ...]:
        """The task sections this preset's task never reads (left at their defaults, which
        validation demands): a dumped config.yaml leaves them out."""
        unread = []
        if self.task != "grpo":
            unread.append("grpo")
        if self.task not in PREFERENCE_TASKS:
            unread.append("preference")
        return tuple(unread)

    def _grpo_problems(self) -> list[tuple[tuple[str, ...], str]]:
        if "grpo" in self.unread_sections():
            # Compared with the defaults, not model_fields_set: a resolved config.yaml lists them.
            changed = self.grpo != GrpoSection()
            return [(("grpo",), "applies to task: grpo only; set task: grpo")] if changed else []
        problems: list[tuple[tuple[str, ...], str]] = []
        if self.dataset.packing:
            problems.append(
                (("dataset", "packing"), "GRPO trains on sampled completions; packing is for sft")
            )
        if self.dataset.format not in ("auto", "messages"):
            problems.append(
                (
                    ("dataset", "format"),
                    "GRPO reads prompts: use auto (a prompt column, or messages ending on a "
                    "user turn) or messages",
                )
            )
        if self.grpo.max_completion_length >= self.model.max_seq_length:
            problems.append(
                (
                    ("grpo", "max_completion_length"),
                    f"leaves no room for the prompt in model.max_seq_length "
                    f"({self.model.max_seq_length}); lower it or raise max_seq_length",
                )
            )
        return problems

    def _preference_problems(self) -> list[tuple[tuple[str, ...], str]]:
        if "preference" in self.unread_sections():
            # Compared with the defaults, not model_fields_set: a resolved config.yaml lists them.
            changed = self.preference != PreferenceSection()
            message = "applies to task: dpo, orpo, kto or simpo only; set one of them as task"
            return [(("preference",), message)] if changed else []
        problems = [
            (("preference", key), text) for key, text in self.preference.problems(self.task)
        ]
        if self.dataset.packing:
            problems.append(
                (
                    ("dataset", "packing"),
                    f"{self.task} compares whole responses; packing is for sft",
                )
            )
        if self.dataset.train_on != "responses":
            problems.append(
                (
                    ("dataset", "train_on"),
                    f"{self.task} scores the responses only (their log-probs are what it "
                    "compares); use responses",
                )
            )
        if self.dataset.format != "auto":
            problems.append(
                (
                    ("dataset", "format"),
                    f"{self.task} reads preference data, whose layout is detected: use auto "
                    "(prompt/chosen/rejected, chosen/rejected conversations, or KTO's "
                    "prompt/completion/label)",
                )
            )
        limit = self.model.max_seq_length
        for key in ("max_prompt_length", "max_completion_length"):
            value = getattr(self.preference, key)
            if value is not None and value >= limit:
                problems.append(
                    (
                        ("preference", key),
                        f"leaves no room for the other side in model.max_seq_length ({limit}); "
                        "lower it or raise max_seq_length",
                    )
                )
        return problems

    def hardware_problems(self, *, cuda: bool) -> list[tuple[tuple[str, ...], str]]:
        """What this machine cannot run, each at the key to change: (key path, message).

        ``cuda``: whether a CUDA GPU is usable here. The CLI (before a run directory exists),
        the run itself and the wizard's method step all ask this one function.
        """
        problems: list[tuple[tuple[str, ...], str]] = []
        on_gpu = uses_gpu(self, gpu_present=cuda)
        where = "training.use_cpu is true" if cuda else "none is available here"
        bits = quant_bits(self.model)
        if bits and not on_gpu:
            key = ("method",) if self.method == "qlora" else ("model", f"load_in_{bits}bit")
            problems.append(
                (
                    key,
                    f"{bits}-bit loading (QLoRA / load_in_{bits}bit) needs a CUDA GPU, and {where}; "
                    "use method: lora (or full) with load_in_4bit/load_in_8bit off, or a GPU box",
                )
            )
        if "8bit" in self.training.optim and not on_gpu:
            problems.append(
                (
                    ("training", "optim"),
                    f"{self.training.optim} needs bitsandbytes on a CUDA GPU, and {where}; "
                    "use adamw_torch on the CPU",
                )
            )
        return problems

    @property
    def quantized(self) -> bool:
        return quant_bits(self.model) is not None  # method qlora validates only with 4 bits

    @property
    def uses_adapter(self) -> bool:
        return uses_adapter(self.method)

"""Axolotl's YAML config (axolotl-ai-cloud/axolotl, its examples/ folder) as finetty rows.

Axolotl trains every weight unless ``adapter`` names lora or qlora, and reads a list of
``datasets``, each with a prompt ``type``; finetty trains on one dataset of one format.
"""

from __future__ import annotations

from typing import Any

from engine.config.importers import common
from engine.config.importers.table import Mapping

# Keys that mean what a finetty key means, under another name.
DIRECT = {
    "base_model": "model.name_or_path",
    "revision_of_model": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "load_in_8bit": "model.load_in_8bit",
    "load_in_4bit": "model.load_in_4bit",
    "sequence_len": "model.max_seq_length",
    "val_set_size": "dataset.val_size",
    "sample_packing": "dataset.packing",
    "lora_r": "lora.r",
    "lora_alpha": "lora.lora_alpha",
    "lora_dropout": "lora.lora_dropout",
    "lora_modules_to_save": "lora.modules_to_save",
    "peft_use_rslora": "lora.use_rslora",
    "peft_use_dora": "lora.use_dora",
    "micro_batch_size": "training.per_device_train_batch_size",
    "eval_batch_size": "training.per_device_eval_batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "num_epochs": "training.num_train_epochs",
    "max_steps": "training.max_steps",
    "learning_rate": "training.learning_rate",
    "lr_scheduler": "training.lr_scheduler_type",
    "warmup_steps": "training.warmup_steps",
    "warmup_ratio": "training.warmup_ratio",
    "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm",
    "adam_beta1": "training.adam_beta1",
    "adam_beta2": "training.adam_beta2",
    "adam_epsilon": "training.adam_epsilon",
    "logging_steps": "training.logging_steps",
    "eval_steps": "training.eval_steps",
    "save_steps": "training.save_steps",
    "save_total_limit": "training.save_total_limit",
    "seed": "training.seed",
    "liger_rms_norm": "training.use_liger_kernel",
    "rl_beta": "preference.beta",
    "dpo_beta": "preference.beta",
    "orpo_alpha": "preference.beta",  # ORPO's λ is finetty's preference.beta for task orpo
    "kto_desirable_weight": "preference.desirable_weight",
    "kto_undesirable_weight": "preference.undesirable_weight",
    "simpo_gamma": "preference.simpo_gamma",
    "cpo_alpha": "preference.cpo_alpha",
    "dpo_label_smoothing": "preference.label_smoothing",
    "dpo_use_weighting": "preference.use_weighting",
}

# Axolotl's defaults (utils/schemas/training.py) where finetty's differ: written out when the
# config leaves them unset, so that the preset trains what Axolotl would.
DEFAULTS = {
    "micro_batch_size": (1, "training.per_device_train_batch_size"),
    "lr_scheduler": ("cosine", "training.lr_scheduler_type"),
    "optimizer": ("adamw_torch_fused", "training.optim"),
}
# Keys finetty has no setting for, and why.
UNMAPPED = {
    "model_type": "finetty loads every model as AutoModelForCausalLM",
    "tokenizer_type": "finetty loads the model's own tokenizer (AutoTokenizer)",
    "base_model_config": "finetty reads the model's config from model.name_or_path",
    "tokenizer_config": "finetty loads the tokenizer from model.name_or_path",
    "hub_model_id": "a preset does not push; export the finished run instead",
    "dataset_prepared_path": "finetty tokenizes the dataset at the start of each run",
    "output_dir": common.OWN_RUN_DIR,
    "lora_model_dir": "finetty trains a new adapter; it cannot continue an existing one",
    "lora_fan_in_fan_out": "finetty's LoRA reads each layer's own weight layout",
    "eval_sample_packing": "finetty evaluates the held-out rows as it packs the training rows",
    "pad_to_sequence_len": "finetty pads each batch to its longest row",
    "tf32": "finetty has no TF32 switch",
    "gradient_checkpointing_kwargs": "finetty's gradient checkpointing has no options",
    "resume_from_checkpoint": "resume with `finetty train --resume RUN`",
    "evals_per_epoch": "finetty counts evaluations in steps: set training.eval_steps",
    "saves_per_epoch": "finetty counts checkpoints in steps: set training.save_steps",
    "special_tokens": "finetty keeps the tokenizer's own special tokens",
    "tokens": "finetty does not add tokens to the vocabulary",
    "remove_unused_columns": "finetty reads only the columns of the dataset's format",
    "xformers_attention": "finetty's attention kernels are sdpa, eager, flash_attention_2 and "
    "flex_attention (model.attn_implementation)",
    "deepspeed": common.OWN_PARALLEL,
    "fsdp": common.OWN_PARALLEL,
    "fsdp_config": common.OWN_PARALLEL,
    "chat_template_jinja": "finetty's chat templates are named, not written in the preset",
    "dataset_processes": "finetty tokenizes in one process",
    "loss_watchdog_threshold": "finetty's health alarms watch the loss, and a non-finite one "
    "stops the run",
    "loss_watchdog_patience": "finetty's health alarms watch the loss, and a non-finite one "
    "stops the run",
    "plugins": "finetty's speed-ups are built in (training.use_liger_kernel, fused_lora)",
}
# The same as finetty's behaviour: nothing to write.
SAME = {
    "strict": "finetty always refuses keys it does not know",
}
DATASET_TYPES = {"alpaca": "alpaca", "sharegpt": "sharegpt", "completion": "text"}
CHAT_TYPES = ("chat_template", "chat_template.default")
PREFERENCE_RL = ("dpo", "orpo", "kto", "simpo")
# Axolotl's gradient_checkpointing values that also move activations off the GPU.
OFFLOAD = ("offload", "offload_disk", "unsloth")


def map_config(data: dict[str, Any]) -> Mapping:
    mapping = KEYS.map(data)
    if "adapter" not in data:
        mapping.implied(
            "adapter", None, {"method": "full"}, "Axolotl trains every weight without an adapter"
        )
    common.implied_defaults(mapping, data, DEFAULTS, "Axolotl's default, not finetty's")
    if data.get("rl") == "simpo":
        # Axolotl passes cpo_alpha to TRL's CPOConfig only when set: TRL's 1.0 (CPO-SimPO).
        note = "TRL CPOConfig's default, which Axolotl keeps (finetty's 0.0 is plain SimPO)"
        common.implied_defaults(mapping, data, {"cpo_alpha": (1.0, "preference.cpo_alpha")}, note)
    return mapping


def _adapter(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if value in (None, ""):
        mapping.to(key, value, {"method": "full"}, "no adapter: every weight is trained")
    elif value == "qlora" or (value == "lora" and data.get("load_in_4bit") is True):
        note = "" if value == "qlora" else "lora on a 4-bit base is finetty's qlora"
        mapping.to(key, value, {"method": "qlora", "model.load_in_4bit": True}, note)
    elif value == "lora":
        mapping.to(key, value, {"method": "lora"})
    else:
        mapping.unmapped(key, value, "finetty trains lora and qlora adapters, or every weight")


def _checkpointing(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if isinstance(value, bool):
        mapping.to(key, value, {"training.gradient_checkpointing": value})
    elif value in OFFLOAD:
        targets = {"training.gradient_checkpointing": True, "training.activation_offloading": True}
        note = "finetty offloads to host memory" + (", not disk" if value == "offload_disk" else "")
        mapping.to(key, value, targets, note)
    else:
        mapping.unmapped(key, value, "expected true, false, offload or offload_disk")


def _attention(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    kernel = "flash_attention_2" if key == "flash_attention" else "sdpa"
    if value is True:
        mapping.to(key, value, {"model.attn_implementation": kernel})
    elif value in (False, None):
        mapping.same(key, value, "model.attn_implementation: auto picks the kernel")
    else:
        mapping.unmapped(key, value, "expected true or false")


def _targets(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    linear = data.get("lora_target_linear") is True
    if key == "lora_target_linear":
        if value is True:
            mapping.to(key, value, {"lora.target_modules": "all-linear"})
        else:
            mapping.same(key, value, "the modules come from lora_target_modules")
        return
    modules = common.names(value)
    if value is None:
        mapping.unmapped(key, value, "")
    elif linear:
        mapping.same(key, value, "lora_target_linear already targets every linear layer")
    elif modules:
        mapping.to(key, value, {"lora.target_modules": modules})
    else:
        mapping.unmapped(key, value, "expected a list of module names")


def _rl(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if value in PREFERENCE_RL:
        mapping.to(key, value, {"task": value})
    elif value == "ipo":
        mapping.to(key, value, {"task": "dpo", "preference.loss_type": ["ipo"]})
    elif value in (None, ""):
        mapping.unmapped(key, None, "")
    else:
        mapping.unmapped(
            key, value, "finetty imports the preference tasks dpo, ipo, orpo, kto and simpo"
        )


def _rpo_alpha(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        targets = {
            "preference.loss_type": ["sigmoid", "sft"],
            "preference.loss_weights": [1.0, value],
        }
        mapping.to(key, value, targets, "RPO is DPO plus a weighted NLL term (TRL 1.16)")
    else:
        mapping.unmapped(key, value, "expected a number")


def _datasets(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if not isinstance(value, list) or not value:
        mapping.unmapped(key, value, "expected a list of datasets, each with a path")
        return
    preference = data.get("rl") in (*PREFERENCE_RL, "ipo")
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if index > 0:
            mapping.unmapped(
                where,
                entry,
                common.ONE_DATASET,
            )
        elif not isinstance(entry, dict):
            mapping.unmapped(where, entry, "expected a mapping with a path")
        else:
            _dataset(mapping, where, entry, preference=preference)


def _dataset(mapping: Mapping, where: str, entry: dict[str, Any], *, preference: bool) -> None:
    for sub, value in entry.items():
        key = f"{where}.{sub}"
        if sub == "path":
            common.direct(mapping, key, value, "dataset.path")
        elif sub == "split":
            common.direct(mapping, key, value, "dataset.split")
        elif sub == "type":
            _dataset_type(mapping, key, value, preference=preference)
        elif _default_field(sub, value):
            mapping.same(key, value, "the name finetty reads too")
        elif sub in DATASET_UNMAPPED:
            mapping.unmapped(key, value, DATASET_UNMAPPED[sub])
        else:
            mapping.unmapped(
                key, value, "finetty reads its formats' own columns: rename them in the data"
            )


# Axolotl's dataset field names that are finetty's too (chat_template and DPO datasets).
DEFAULT_FIELDS = {
    "field_messages": ("messages", "conversations"),
    "field_chosen": ("chosen",),
    "field_rejected": ("rejected",),
    "field_prompt": ("prompt",),
}
DEFAULT_PROPERTIES = {"role": "role", "content": "content"}
DATASET_UNMAPPED = {
    "data_files": "name the file itself in dataset.path",
    "name": "finetty loads a hub dataset's default configuration",
    "ds_type": "finetty tells a file's type from its name (.jsonl, .json, .csv, .parquet)",
    "shards": "finetty reads the whole split (dataset.split takes slices: train[:10%])",
}


def _default_field(sub: str, value: Any) -> bool:
    """Whether a dataset entry's key only repeats the names finetty reads anyway."""
    if sub in DEFAULT_FIELDS:
        return value in DEFAULT_FIELDS[sub]
    if sub == "message_property_mappings":
        return value == DEFAULT_PROPERTIES
    if sub == "roles":  # each role named only by itself
        return isinstance(value, dict) and all(names == [role] for role, names in value.items())
    return False


def _dataset_type(mapping: Mapping, key: str, value: Any, *, preference: bool) -> None:
    if preference:
        mapping.same(
            key,
            value,
            "finetty detects preference layouts itself (prompt/chosen/rejected, chosen/rejected "
            "conversations, or KTO's prompt/completion/label)",
        )
    elif isinstance(value, str) and value in DATASET_TYPES:
        fmt = DATASET_TYPES[value]
        targets: dict[str, Any] = {"dataset.format": fmt}
        if fmt == "text":
            targets["dataset.train_on"] = "all"  # plain text has no responses to single out
        mapping.to(key, value, targets)
    elif value in CHAT_TYPES:
        mapping.to(key, value, {"dataset.format": "messages"})
    else:
        mapping.unmapped(key, value, "finetty's formats are alpaca, sharegpt, messages and text")


KEYS = common.KeyTable(
    source="Axolotl",
    handlers={
        "adapter": _adapter,
        "datasets": _datasets,
        "chat_template": common.chat_template,
        "optimizer": common.optimizer,
        "bf16": common.precision,
        "fp16": common.precision,
        "float16": common.precision,
        "float32": common.precision,
        "gradient_checkpointing": _checkpointing,
        "flash_attention": _attention,
        "sdp_attention": _attention,
        "lora_target_linear": _targets,
        "lora_target_modules": _targets,
        "train_on_inputs": common.train_on_all,
        "rl": _rl,
        "rpo_alpha": _rpo_alpha,
    },
    direct=DIRECT,
    same=SAME,
    unmapped=UNMAPPED,
    prefixes={"wandb_": common.NO_TRACKER},
)

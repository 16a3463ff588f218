"""LLaMA-Factory's YAML config (hiyouga/LLaMA-Factory, its examples/ folder) as finetty rows.

Most keys are TrainingArguments' own and keep their names. LLaMA-Factory's defaults differ
from finetty's in a few places (LoRA rank 8 and alpha twice the rank, gradient checkpointing
on, three epochs, learning rate 5e-5): those are written out as implied rows, so that the preset
trains what the config trained.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.config.importers import common, llamafactory_data
from engine.config.importers.table import Mapping

HF_KEYS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "seed",
    "gradient_checkpointing",
)
DIRECT = {
    "model_name_or_path": "model.name_or_path",
    "model_revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "cutoff_len": "model.max_seq_length",
    "max_samples": "dataset.max_rows",
    "val_size": "dataset.val_size",
    "lora_rank": "lora.r",
    "lora_alpha": "lora.lora_alpha",
    "lora_dropout": "lora.lora_dropout",
    "use_rslora": "lora.use_rslora",
    "use_dora": "lora.use_dora",
    "enable_liger_kernel": "training.use_liger_kernel",
    "pref_beta": "preference.beta",
    "simpo_gamma": "preference.simpo_gamma",
    "dpo_label_smoothing": "preference.label_smoothing",
    "kto_chosen_weight": "preference.desirable_weight",
    "kto_rejected_weight": "preference.undesirable_weight",
    "report_to": "training.report_to",
    **{key: f"training.{key}" for key in HF_KEYS},
}
UNMAPPED = {
    "adapter_name_or_path": "finetty trains a new adapter; it cannot continue an existing one",
    "eval_dataset": "finetty holds out dataset.val_size of the training rows instead",
    "overwrite_cache": "finetty tokenizes the dataset at the start of each run",
    "tokenized_path": "finetty tokenizes the dataset at the start of each run",
    "preprocessing_num_workers": "finetty tokenizes in one process",
    "dataloader_num_workers": "finetty batches in the training process",
    "output_dir": common.OWN_RUN_DIR,
    "overwrite_output_dir": common.OWN_RUN_DIR + ", never over an earlier run",
    "plot_loss": "the dashboard and `finetty runs` show the loss curve",
    "ddp_timeout": common.OWN_PARALLEL,
    "deepspeed": common.OWN_PARALLEL,
    "ref_model": "finetty's reference model is the starting weights",
    "save_only_model": "finetty's checkpoints hold the optimizer state too, to resume from",
    "mask_history": "finetty trains on every assistant turn of a conversation",
    "resume_from_checkpoint": "resume with `finetty train --resume RUN`",
    "pref_ftx": "write it as preference.loss_type [sigmoid, sft] with loss_weights [1.0, pref_ftx]",
}
SAME = {
    "do_train": "a finetty preset always trains",
    "dataset_dir": f"the folder of the {llamafactory_data.INFO_FILE} that names the datasets",
    "quantization_method": "finetty quantizes with bitsandbytes",
}
STAGES = {"sft": "sft", "kto": "kto", "pt": "sft"}
PREF_LOSSES = {"sigmoid": "dpo", "orpo": "orpo", "simpo": "simpo"}
DPO_LOSS_TYPES = ("hinge", "ipo")
ATTENTION = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "auto": "auto"}
LF_LORA_RANK = 8  # LLaMA-Factory's FinetuningArguments defaults
# TrainingArguments' defaults where finetty's differ (num_train_epochs is ignored when
# max_steps is set, in both).
HF_DEFAULTS = {
    "num_train_epochs": (3.0, "training.num_train_epochs"),
    "learning_rate": (5e-5, "training.learning_rate"),
    "seed": (42, "training.seed"),
}


def map_config(data: dict[str, Any], info: llamafactory_data.DatasetInfo | None = None) -> Mapping:
    """``info``: the dataset_info.json that names the config's datasets, where one was found."""

    def dataset(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
        llamafactory_data.map_dataset(mapping, key, value, data, info)

    mapping = replace(KEYS, handlers={**KEYS.handlers, "dataset": dataset}).map(data)
    _implied_defaults(mapping, data)
    return mapping


def _implied_defaults(mapping: Mapping, data: dict[str, Any]) -> None:
    if data.get("finetuning_type", "lora") == "lora":
        rank = data.get("lora_rank") or LF_LORA_RANK
        if "lora_rank" not in data:
            mapping.implied("lora_rank", rank, {"lora.r": rank}, "LLaMA-Factory's default rank")
        if "lora_alpha" not in data and isinstance(rank, int):
            mapping.implied(
                "lora_alpha",
                rank * 2,
                {"lora.lora_alpha": rank * 2},
                "LLaMA-Factory: twice the rank",
            )
        if "lora_target" not in data:
            mapping.implied(
                "lora_target",
                "all",
                {"lora.target_modules": "all-linear"},
                "LLaMA-Factory's default targets every linear layer",
            )
    if "disable_gradient_checkpointing" not in data and "gradient_checkpointing" not in data:
        mapping.implied(
            "disable_gradient_checkpointing",
            False,
            {"training.gradient_checkpointing": True},
            "LLaMA-Factory checkpoints activations unless told not to",
        )
    common.implied_defaults(mapping, data, HF_DEFAULTS, "TrainingArguments' default")


def _stage(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if value == "dpo":
        loss = data.get("pref_loss", "sigmoid")
        task = PREF_LOSSES.get(loss, "dpo") if isinstance(loss, str) else "dpo"
        mapping.to(key, value, {"task": task}, f"pref_loss {loss} is task {task}")
    elif isinstance(value, str) and value in STAGES:
        targets: dict[str, Any] = {"task": STAGES[value]}
        note = ""
        if value == "pt":
            targets["dataset.train_on"] = "all"
            note = "pre-training is sft with the loss on every token"
        mapping.to(key, value, targets, note)
    else:
        mapping.unmapped(key, value, "finetty imports the stages sft, pt, dpo and kto")


def _pref_loss(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if data.get("stage") != "dpo":
        mapping.unmapped(key, value, "read only with stage: dpo")
    elif isinstance(value, str) and value in PREF_LOSSES:
        mapping.same(key, value, f"picks task: {PREF_LOSSES[value]} (see stage)")
    elif value in DPO_LOSS_TYPES:
        mapping.to(key, value, {"preference.loss_type": [value]})
    else:
        mapping.unmapped(key, value, "finetty imports sigmoid, hinge, ipo, orpo and simpo")


def _finetuning_type(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if value == "full":
        mapping.to(key, value, {"method": "full"})
    elif value == "lora":
        quantized = data.get("quantization_bit") == 4
        mapping.to(key, value, {"method": "qlora" if quantized else "lora"})
    else:
        mapping.unmapped(key, value, "finetty trains lora, qlora or every weight (full)")


def _quantization(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if value == 4:
        mapping.to(key, value, {"model.load_in_4bit": True})
    elif value == 8:
        mapping.to(key, value, {"model.load_in_8bit": True})
    else:
        mapping.unmapped(key, value, "finetty loads bases in 4 or 8 bits (bitsandbytes)")


def _lora_target(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    modules = common.names(value)
    if modules == ["all"]:
        mapping.to(key, value, {"lora.target_modules": "all-linear"})
    elif modules:
        mapping.to(key, value, {"lora.target_modules": modules})
    else:
        mapping.unmapped(key, value, "expected all or module names")


def _additional_target(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    modules = common.names(value)
    if modules:
        mapping.to(key, value, {"lora.modules_to_save": modules})
    else:
        mapping.unmapped(key, value, "expected module names")


def _attention(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if isinstance(value, str) and value in ATTENTION:
        mapping.to(key, value, {"model.attn_implementation": ATTENTION[value]})
    else:
        mapping.unmapped(key, value, "finetty takes auto, fa2, sdpa or disabled")


def _packing(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if not isinstance(value, bool):
        mapping.unmapped(key, value, "expected true or false")
        return
    packed = bool(data.get("packing")) or bool(data.get("neat_packing"))
    # finetty's packing keeps attention within each example: neat_packing's behaviour.
    note = "finetty's packing keeps attention within each example (neat_packing)"
    mapping.to(key, value, {"dataset.packing": packed}, note if packed else "")


def _eval_strategy(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if value == "steps":
        mapping.same(key, value, "finetty evaluates every training.eval_steps")
    elif value == "no":
        mapping.same(key, value, "finetty evaluates only when training.eval_steps is set")
    else:
        mapping.unmapped(key, value, "finetty counts evaluations in steps: set training.eval_steps")


def _no_checkpointing(mapping: Mapping, key: str, value: Any, data: dict[str, Any]) -> None:
    if isinstance(value, bool):
        mapping.to(key, value, {"training.gradient_checkpointing": not value})
    else:
        mapping.unmapped(key, value, "expected true or false")


KEYS = common.KeyTable(
    source="LLaMA-Factory",
    handlers={
        "stage": _stage,
        "pref_loss": _pref_loss,
        "finetuning_type": _finetuning_type,
        "quantization_bit": _quantization,
        "lora_target": _lora_target,
        "additional_target": _additional_target,
        "template": common.chat_template,
        "optim": common.optimizer,
        "bf16": common.precision,
        "fp16": common.precision,
        "flash_attn": _attention,
        "packing": _packing,
        "neat_packing": _packing,
        "train_on_prompt": common.train_on_all,
        "eval_strategy": _eval_strategy,
        "disable_gradient_checkpointing": _no_checkpointing,
    },
    direct=DIRECT,
    same=SAME,
    unmapped=UNMAPPED,
)

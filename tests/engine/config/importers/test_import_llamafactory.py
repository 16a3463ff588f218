"""LLaMA-Factory's own example configs (tests/data/imports/llamafactory) as finetty presets."""

from __future__ import annotations

import pytest

from engine.config.importers import llamafactory
from engine.config.importers.table import IMPLIED, MAPPED, SAME, UNMAPPED
from tests.engine.config.importers.helpers import imported, rows_by_key


def test_lora_sft_example() -> None:
    result = imported("llamafactory/llama3_lora_sft.yaml")
    preset, rows = result.preset, rows_by_key(result)
    assert result.source == "llamafactory"
    assert (preset.task, preset.method) == ("sft", "lora")
    assert preset.model.name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (preset.model.dtype, preset.model.max_seq_length) == ("bfloat16", 1024)
    assert preset.dataset.chat_template == "llama-3"
    assert (preset.dataset.max_rows, preset.dataset.val_size) == (1000, 0.1)
    training = preset.training
    assert (training.learning_rate, training.num_train_epochs) == (1e-4, 3.0)
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (1, 8)
    assert (training.warmup_ratio, training.eval_steps, training.save_steps) == (0.1, 500, 500)
    assert training.logging_steps == 10
    # LLaMA-Factory's defaults where finetty's differ, written out.
    assert (preset.lora.r, preset.lora.lora_alpha, preset.lora.target_modules) == (
        8,
        16,
        "all-linear",
    )
    assert training.gradient_checkpointing
    assert rows["lora_rank"].status == IMPLIED and rows["lora_alpha"].status == IMPLIED
    assert rows["disable_gradient_checkpointing"].status == IMPLIED
    assert training.seed == 42 and rows["seed"].status == IMPLIED  # TrainingArguments' default
    assert rows["eval_strategy"].status == SAME


def test_dataset_names_are_named_with_the_fix() -> None:
    rows = rows_by_key(imported("llamafactory/llama3_lora_sft.yaml"))
    row = rows["dataset"]
    assert row.status == UNMAPPED and row.source_value == "identity,alpaca_en_demo"
    assert "dataset_info.json" in row.note and "dataset.path" in row.note
    for key in ("ddp_timeout", "output_dir", "plot_loss", "preprocessing_num_workers"):
        assert rows[key].status == UNMAPPED and rows[key].note, key


def test_qlora_example() -> None:
    result = imported("llamafactory/llama3_lora_sft_otfq.yaml")
    preset, rows = result.preset, rows_by_key(result)
    assert preset.method == "qlora" and preset.model.load_in_4bit
    assert preset.model.trust_remote_code
    assert (preset.lora.r, preset.lora.lora_alpha) == (8, 16)
    assert rows["lora_rank"].status == MAPPED and rows["quantization_method"].status == SAME
    assert preset.training.eval_steps is None  # its eval block is commented out


def test_full_example() -> None:
    result = imported("llamafactory/llama3_full_sft.yaml")
    rows = rows_by_key(result)
    assert result.preset.method == "full"
    assert rows["deepspeed"].status == UNMAPPED
    assert not any(key.startswith("lora.") for row in result.rows for key in row.targets)


def test_dpo_example(preference_trainable: None) -> None:
    result = imported("llamafactory/llama3_lora_dpo.yaml")
    assert result.preset.task == "dpo"
    assert result.preset.preference.beta == 0.1
    assert result.preset.training.learning_rate == 5e-6
    assert rows_by_key(result)["pref_loss"].status == SAME


def test_kto_example(preference_trainable: None) -> None:
    result = imported("llamafactory/llama3_lora_kto.yaml")
    assert result.preset.task == "kto"
    # report_to: none maps to training.report_to now that finetty has trackers
    assert rows_by_key(result)["report_to"].status in (MAPPED, SAME)
    assert result.preset.training.report_to == ["none"]


@pytest.mark.parametrize(
    ("loss", "task"), [("orpo", "orpo"), ("simpo", "simpo"), ("sigmoid", "dpo")]
)
def test_pref_loss_picks_the_task(loss: str, task: str) -> None:
    values = llamafactory.map_config({"stage": "dpo", "pref_loss": loss}).target_values()
    assert values["task"] == task


def test_alpha_defaults_to_twice_the_rank_given() -> None:
    values = llamafactory.map_config({"finetuning_type": "lora", "lora_rank": 16}).target_values()
    assert (values["lora.r"], values["lora.lora_alpha"]) == (16, 32)


def test_checkpointing_off_and_neat_packing() -> None:
    mapping = llamafactory.map_config(
        {"disable_gradient_checkpointing": True, "neat_packing": True}
    )
    values = mapping.target_values()
    assert values["training.gradient_checkpointing"] is False
    assert values["dataset.packing"] is True


def test_family_templates_are_the_models_own() -> None:
    # examples/train_lora/qwen3_lora_sft.yaml's template
    values = llamafactory.map_config({"template": "qwen3_nothink"}).target_values()
    assert values["dataset.chat_template"] == "auto"  # the model's own, else ChatML: Qwen's
    values = llamafactory.map_config({"template": "gemma3"}).target_values()
    assert values["dataset.chat_template"] == "model"

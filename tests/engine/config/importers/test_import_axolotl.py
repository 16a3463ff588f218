"""Axolotl's own example configs (tests/data/imports/axolotl) as finetty presets."""

from __future__ import annotations

import pytest

from engine.config.importers.table import EMPTY, IMPLIED, MAPPED, SAME, UNMAPPED
from tests.engine.config.importers.helpers import imported, rows_by_key


def test_qlora_example_maps_every_knob() -> None:
    result = imported("axolotl/qlora.yml")
    preset = result.preset
    assert result.source == "axolotl"
    assert (preset.method, preset.task) == ("qlora", "sft")
    assert preset.model.name_or_path == "NousResearch/Meta-Llama-3-8B"
    assert preset.model.load_in_4bit and not preset.model.load_in_8bit
    assert (preset.model.max_seq_length, preset.model.attn_implementation) == (
        4096,
        "flash_attention_2",
    )
    assert (preset.dataset.path, preset.dataset.format) == ("aaditya/alpaca_subset_1", "alpaca")
    assert preset.dataset.packing and preset.dataset.val_size == 0
    lora = preset.lora
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.target_modules) == (
        32,
        16,
        0.05,
        "all-linear",
    )
    training = preset.training
    assert training.per_device_train_batch_size == 2
    assert training.gradient_accumulation_steps == 4
    assert training.num_train_epochs == 4
    assert (training.optim, training.lr_scheduler_type) == ("paged_adamw_32bit", "cosine")
    assert (training.learning_rate, training.warmup_steps) == (2e-4, 10)
    assert training.gradient_checkpointing and training.logging_steps == 1
    assert preset.model.dtype == "auto"  # bf16: auto is finetty's dtype: auto


def test_qlora_example_names_what_has_no_equivalent() -> None:
    rows = rows_by_key(imported("axolotl/qlora.yml"))
    for key in ("evals_per_epoch", "saves_per_epoch", "special_tokens", "tf32", "model_type"):
        assert rows[key].status == UNMAPPED and rows[key].note, key
    assert "eval_steps" in rows["evals_per_epoch"].note
    assert rows["wandb_project"].status == EMPTY
    assert rows["strict"].status == SAME and rows["bf16"].status == SAME
    assert rows["adapter"].targets == {"method": "qlora", "model.load_in_4bit": True}


def test_lora_8bit_example_keeps_the_8bit_base_and_saved_modules() -> None:
    result = imported("axolotl/lora-8b.yml")
    preset, rows = result.preset, rows_by_key(result)
    assert preset.method == "lora" and preset.model.load_in_8bit
    assert preset.lora.modules_to_save == ["embed_tokens", "lm_head"]
    assert preset.training.optim == "adamw_8bit"  # TrainingArguments' adamw_bnb_8bit
    assert "adamw_bnb_8bit" in rows["optimizer"].note
    assert preset.dataset.val_size == 0.05
    assert rows["eval_sample_packing"].status == UNMAPPED


def test_full_finetune_example_trains_every_weight() -> None:
    result = imported("axolotl/fft-8b.yaml")
    rows = rows_by_key(result)
    assert result.preset.method == "full"
    assert rows["adapter"].status == IMPLIED and rows["adapter"].source_value is None
    # YAML 1.1 reads 2e-5 (no dot) as text: it is a number in the preset.
    assert rows["learning_rate"].source_value == "2e-5"
    assert result.preset.training.learning_rate == 2e-5
    assert "learning_rate: 2.0e-05" in result.yaml_text
    assert rows["gradient_checkpointing_kwargs"].status == UNMAPPED


def test_dpo_example(preference_trainable: None) -> None:
    result = imported("axolotl/instruct-dpo-lora-8b.yml")
    preset, rows = result.preset, rows_by_key(result)
    assert (preset.task, preset.method) == ("dpo", "lora")
    assert preset.dataset.chat_template == "llama-3"
    assert preset.dataset.path == "fozziethebeat/alpaca_messages_2k_dpo_test"
    assert preset.dataset.format == "auto"  # preference layouts are detected
    assert rows["datasets[0].type"].status == SAME
    # conversation is not a column name finetty reads; the others repeat its own names.
    assert rows["datasets[0].field_messages"].status == UNMAPPED
    assert "rename" in rows["datasets[0].field_messages"].note
    for sub in ("field_chosen", "field_rejected", "roles", "message_property_mappings"):
        assert rows[f"datasets[0].{sub}"].status == SAME, sub


def test_kto_example(preference_trainable: None) -> None:
    result = imported("axolotl/qlora-1b-kto.yaml")
    preset, rows = result.preset, rows_by_key(result)
    assert (preset.task, preset.method) == ("kto", "qlora")
    assert preset.preference.beta == 0.5
    assert preset.preference.desirable_weight == 0.2
    assert preset.training.optim == "adamw_8bit"
    assert rows["rl_beta"].status == MAPPED
    assert rows["remove_unused_columns"].status == UNMAPPED


@pytest.mark.parametrize(
    ("extra", "targets"),
    [
        ({"rl": "ipo"}, {"task": "dpo", "preference.loss_type": ["ipo"]}),
        (
            {"rl": "dpo", "rpo_alpha": 0.5},
            {"preference.loss_type": ["sigmoid", "sft"], "preference.loss_weights": [1.0, 0.5]},
        ),
        (
            {"lora_target_modules": ["q_proj", "v_proj"]},
            {"lora.target_modules": ["q_proj", "v_proj"]},
        ),
        ({"train_on_inputs": True}, {"dataset.train_on": "all"}),
        ({"sdp_attention": True}, {"model.attn_implementation": "sdpa"}),
    ],
)
def test_keys_the_examples_leave_out(extra: dict, targets: dict) -> None:
    from engine.config.importers import axolotl

    values = axolotl.map_config({"base_model": "m", "adapter": "lora", **extra}).target_values()
    assert targets.items() <= values.items()


def test_axolotl_defaults_that_differ_from_finettys_are_written() -> None:
    from engine.config.importers import axolotl

    mapping = axolotl.map_config({"base_model": "m", "adapter": "lora", "learning_rate": 1e-4})
    implied = {row.source_key: row.targets for row in mapping.rows if row.status == IMPLIED}
    assert implied == {
        "micro_batch_size": {"training.per_device_train_batch_size": 1},
        "lr_scheduler": {"training.lr_scheduler_type": "cosine"},
        "optimizer": {"training.optim": "adamw_torch_fused"},
    }


def test_simpo_keeps_trls_cpo_alpha_as_axolotl_does() -> None:
    from engine.config.importers import axolotl

    values = axolotl.map_config({"base_model": "m", "rl": "simpo"}).target_values()
    assert (values["task"], values["preference.cpo_alpha"]) == ("simpo", 1.0)
    values = axolotl.map_config({"base_model": "m", "rl": "simpo", "cpo_alpha": 0}).target_values()
    assert values["preference.cpo_alpha"] == 0


@pytest.mark.parametrize("value", ["offload", "unsloth"])
def test_offloaded_checkpointing(value: str) -> None:
    from engine.config.importers import axolotl

    values = axolotl.map_config({"gradient_checkpointing": value}).target_values()
    assert values["training.gradient_checkpointing"] is True
    assert values["training.activation_offloading"] is True

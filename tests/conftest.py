"""Fixtures shared by every test folder: tiny real models, built inside the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def micro_llama_config(vocab_size: int, **overrides: object):
    """A 2-layer, 16-wide random Llama's config, for tests that need no tokenizer."""
    from transformers import LlamaConfig

    shape = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    return LlamaConfig(vocab_size=vocab_size, **{**shape, **overrides})


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2 converted to an HF folder (30 s the first time, then cached)."""
    from engine.models.embedded import ensure_converted

    return ensure_converted("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer_dir(request: pytest.FixtureRequest) -> Path:
    """SmolLM2's tokenizer: $FINETTY_TEST_TOKENIZER (the GPU box carries only these files), else embedded."""
    carried = os.environ.get("FINETTY_TEST_TOKENIZER")
    return Path(carried) if carried else request.getfixturevalue("embedded_dir")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a local HF model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def chat_jsonl(tmp_path: Path) -> Path:
    """A small messages-format dataset with checkable answers."""
    path = tmp_path / "chat.jsonl"
    rows = []
    for i in range(24):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Repeat the number {i}."},
                    {"role": "assistant", "content": f"{i}"},
                ]
            }
        )
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture
def make_preset(tiny_model_dir: Path, chat_jsonl: Path):
    """Build a validated preset for fast runs on the tiny model; keyword args override training keys."""
    from engine.config.presets import validate

    def build(**training: object):
        return validate(_tiny_preset_data(tiny_model_dir, chat_jsonl, **training))

    return build


@pytest.fixture
def pairs_jsonl(tmp_path: Path) -> Path:
    """A small preference dataset (TRL's conversational prompt/chosen/rejected)."""
    path = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Say the number {i}."}],
            "chosen": [{"role": "assistant", "content": f"{i}"}],
            "rejected": [{"role": "assistant", "content": f"{i + 1} or so"}],
        }
        for i in range(16)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture
def make_pair_preset(tiny_model_dir: Path, pairs_jsonl: Path):
    """A validated preference preset (dpo, orpo, simpo) on the tiny model and pairs_jsonl: 2
    pairs a micro-batch, 2 micro-batches a step, 4 steps; keyword args override training keys."""
    from engine.config.presets import validate

    def build(task: str, **training: object):
        batch = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
        data = _tiny_preset_data(
            tiny_model_dir, pairs_jsonl, **{**batch, "max_steps": 4, "save_steps": 2, **training}
        )
        return validate({**data, "name": f"tiny-{task}", "task": task})

    return build


def _tiny_preset_data(model_dir: Path, dataset: Path, **training: object) -> dict:
    return {
        "name": "tiny",
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "max_seq_length": 64},
        "dataset": {"path": str(dataset), "format": "auto", "val_size": 4},
        "method": "lora",
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1},
        "training": {
            "learning_rate": 5e-3,
            "per_device_train_batch_size": 4,
            "max_steps": 6,
            "save_steps": 3,
            "logging_steps": 1,
            "seed": 0,
            **training,
        },
    }

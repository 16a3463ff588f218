"""Shared fixtures for engine tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    """The embedded SmolLM2 tokenizer (ChatML, eos/pad ``<|im_end|>``); ~0.5 s once cached."""
    from transformers import AutoTokenizer

    from engine.models.embedded import ensure_converted

    return AutoTokenizer.from_pretrained(ensure_converted("smollm2-135m-instruct"))

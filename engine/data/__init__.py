"""Datasets as the trainer sees them: sources (local files, hub datasets, the built-in set),
format detection, chat templates, tokenizing with assistant-only labels, packing.

May import engine.config and engine.core. Torch-free."""

from __future__ import annotations

from engine.data.encode import EncodedExample, encode_conversation, encode_text
from engine.data.formats import describe_format, detect_format, to_conversations
from engine.data.prepare import DatasetStats, PreparedDataset, pack_examples, prepare_dataset
from engine.data.sources import load_records
from engine.data.templates import (
    CHAT_TEMPLATES,
    end_of_turn,
    resolve_chat_template,
    template_eos,
    template_names,
)

__all__ = [
    "CHAT_TEMPLATES",
    "DatasetStats",
    "EncodedExample",
    "PreparedDataset",
    "describe_format",
    "detect_format",
    "encode_conversation",
    "encode_text",
    "end_of_turn",
    "load_records",
    "pack_examples",
    "prepare_dataset",
    "resolve_chat_template",
    "template_eos",
    "template_names",
    "to_conversations",
]

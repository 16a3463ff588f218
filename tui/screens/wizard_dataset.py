"""Wizard step 2, the dataset: detected format, rows rendered through the chat template with the
trained tokens highlighted, and the token-length histogram with the truncation count.

Reading rows and loading a tokenizer are slow (the tokenizer imports transformers), so both run
in a thread worker and are cached; the screen says "loading tokenizer…" meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult

from engine.config.schema import MAX_SEQ_LENGTH
from engine.core.errors import FinettyError
from engine.core.terminal_text import printable
from engine.data import (
    describe_format,
    detect_format,
    encode_conversation,
    encode_text,
    load_records,
    resolve_chat_template,
    template_names,
    to_conversations,
)
from tui.screens.wizard import WizardStep
from tui.widgets.histogram import LengthHistogram
from tui.widgets.token_preview import PreviewRow, TokenPreview
from tui.wizard_state import WizardState

PREVIEW_ROWS = 3
PREVIEW_TOKENS = 300  # per row: enough to see the template, short enough to scroll past
SAMPLE_ROWS = 500  # rows encoded for the histogram
# Past any max_seq_length the schema allows, and bounded: a row is tokenized only that far.
NO_LIMIT = MAX_SEQ_LENGTH + 1
_RECORDS: dict[tuple[str, str], list[dict[str, Any]]] = {}
_TOKENIZERS: dict[tuple[str, str | None, bool], Any] = {}
_LOAD_LOCK = threading.Lock()


def default_tokenizer_loader(name: str, revision: str | None, trust: bool) -> Any:
    from engine.models.loading import load_tokenizer, resolve_source

    return load_tokenizer(resolve_source(name), revision=revision, trust_remote_code=trust)


# Tests swap this for a stub or a preloaded tokenizer.
tokenizer_loader: Callable[[str, str | None, bool], Any] = default_tokenizer_loader


@dataclass(frozen=True)
class Preview:
    detected: str
    rows: list[PreviewRow]
    lengths: list[int]
    total_rows: int


def records_for(path: str, split: str) -> list[dict[str, Any]]:
    key = (path, split)
    if key not in _RECORDS:
        _RECORDS.clear()  # one dataset at a time: hub datasets can be large
        _RECORDS[key] = load_records(
            path, split
        )  # the built-in dataset included, as engine.train.run
    return _RECORDS[key]


def tokenizer_for(state: WizardState) -> Any:
    key = (
        str(state.get("model.name_or_path")),
        state.get("model.revision"),
        bool(state.get("model.trust_remote_code")),
    )
    with _LOAD_LOCK:  # two threads importing transformers at once can half-import it
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = tokenizer_loader(*key)
    return _TOKENIZERS[key]


def tokenizer_cached(state: WizardState) -> bool:
    key = (
        str(state.get("model.name_or_path")),
        state.get("model.revision"),
        bool(state.get("model.trust_remote_code")),
    )
    return key in _TOKENIZERS


def build_preview(state: WizardState, status: Callable[[str], None]) -> Preview:
    """Read, detect, render and measure; every problem is a FinettyError with a hint."""
    path, split = str(state.get("dataset.path")), str(state.get("dataset.split"))
    status("reading the dataset…")
    records = records_for(path, split)
    fmt = str(state.get("dataset.format"))
    detected = detect_format(records, path) if fmt == "auto" else fmt
    sample = records[:SAMPLE_ROWS]
    conversations = to_conversations(sample, detected, path)
    if not tokenizer_cached(state):
        status("loading tokenizer…")
    tokenizer = tokenizer_for(state)
    template = resolve_chat_template(tokenizer, str(state.get("dataset.chat_template")))
    train_on = str(state.get("dataset.train_on"))
    encoded = [
        encode_text(tokenizer, conv, NO_LIMIT)
        if isinstance(conv, str)
        else encode_conversation(tokenizer, conv, template, train_on, NO_LIMIT)  # type: ignore[arg-type]
        for conv in conversations
    ]
    max_length = int(state.get("model.max_seq_length") or NO_LIMIT)
    rows = []
    for example in encoded[:PREVIEW_ROWS]:
        ids = example.input_ids[: min(max_length, PREVIEW_TOKENS)]
        pieces = [printable(tokenizer.decode([token])) for token in ids]  # escape codes shown
        trained = [label != -100 for label in example.labels[: len(ids)]]
        rows.append(PreviewRow(pieces, trained, truncated=len(example) > max_length))
    label = ("detected " if fmt == "auto" else "") + describe_format(detected)
    return Preview(label, rows, [len(example) for example in encoded], len(records))


class DatasetStep(WizardStep):
    STEP = 1
    KEYS: ClassVar[tuple[str, ...]] = (
        "dataset.path",
        "dataset.split",
        "dataset.format",
        "dataset.chat_template",
        "dataset.train_on",
        "model.max_seq_length",
        "dataset.packing",
        "dataset.val_size",
        "dataset.max_rows",
    )
    PREVIEW_KEYS = frozenset(KEYS[:5]) | {"model.name_or_path"}
    DEFAULT_CSS = """
    DatasetStep #dataset-preview, DatasetStep #dataset-lengths {
        height: auto; border: round $primary; padding: 0 1; margin: 0 0 1 0;
    }
    """

    def compose_body(self) -> ComposeResult:
        suggest = {
            "dataset.path": ["builtin:finetty-skills", "mlabonne/FineTome-100k"],
            "dataset.chat_template": template_names(),
        }
        yield from self.fields(self.KEYS[:6], **suggest)
        preview = TokenPreview(id="dataset-preview")
        preview.border_title = "Preview through the chat template"
        yield preview
        lengths = LengthHistogram(id="dataset-lengths")
        lengths.border_title = "Token lengths"
        yield lengths
        yield from self.fields(self.KEYS[6:])

    def on_mount(self) -> None:
        super().on_mount()
        self.refresh_preview()

    def field_changed(self, key: str) -> None:
        if key == "model.max_seq_length":
            self.update_lengths()
        if key in self.PREVIEW_KEYS or key == "model.max_seq_length":
            self.debounce(self.refresh_preview, 0.4)

    def refresh_preview(self) -> None:
        if any(key in self.state.field_errors() for key in self.PREVIEW_KEYS):
            self.query_one(TokenPreview).show_status("Fix the fields above to see a preview.")
            return
        self.query_one(TokenPreview).show_status("reading the dataset…")
        self.load_preview(self.snapshot())

    @work(thread=True, exclusive=True, group="dataset-preview")
    def load_preview(self, snapshot: WizardState) -> None:
        try:
            preview = build_preview(snapshot, lambda text: self.from_thread(self.status, text))
        except FinettyError as exc:
            text = f"✗ {exc.message}" + (f"\n  {exc.hint}" if exc.hint else "")
            self.from_thread(self.status, text, "$text-error")
            return
        except Exception as exc:  # noqa: BLE001 - a preview must never take the app down
            self.from_thread(self.status, f"✗ {type(exc).__name__}: {exc}", "$text-error")
            return
        self.from_thread(self.show_preview, preview)

    def status(self, text: str, style: str = "$foreground-muted") -> None:
        self.query_one(TokenPreview).show_status(text, style)

    def show_preview(self, preview: Preview) -> None:
        self.preview = preview
        widget = self.query_one(TokenPreview)
        widget.show_rows(preview.rows)
        widget.border_subtitle = f"{preview.detected}, {preview.total_rows:,} rows"
        self.update_lengths()

    def update_lengths(self) -> None:
        preview: Preview | None = getattr(self, "preview", None)
        max_length = self.state.get("model.max_seq_length")
        if preview is None or not isinstance(max_length, int) or max_length < 1:
            return
        histogram = self.query_one(LengthHistogram)
        histogram.show(preview.lengths, max_length)
        over = sum(1 for n in preview.lengths if n > max_length)
        sampled = (
            f" (first {len(preview.lengths)} rows)"
            if preview.total_rows > len(preview.lengths)
            else ""
        )
        histogram.border_subtitle = f"{over} truncated at {max_length}{sampled}"

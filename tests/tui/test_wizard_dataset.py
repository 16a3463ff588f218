"""The dataset step with the real embedded tokenizer: the preview through the chat template,
trained tokens apart from masked ones, and the truncation count at the chosen max length."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.scenes.wizard import SceneApp, settle
from tui.screens.wizard_dataset import DatasetStep, Preview
from tui.screens.wizard_flow import step_screen
from tui.widgets.form import FormField
from tui.widgets.histogram import LengthHistogram, buckets
from tui.wizard_state import WizardState

pytestmark = pytest.mark.anyio
DATA = Path(__file__).resolve().parents[1] / "data" / "alpaca_small.jsonl"


def test_buckets_match_the_engines_bounds() -> None:
    rows, over = buckets([1, 10, 11, 100, 101, 500], 100)
    assert rows[0] == (10, 2) and rows[1] == (20, 1) and rows[-1] == (100, 1)
    assert over == 2


async def test_preview_highlights_trained_tokens_and_counts_truncation(embedded_dir) -> None:
    state = WizardState()
    state.set_text("dataset.path", str(DATA))
    state.set_text("dataset.chat_template", "chatml")
    app = SceneApp(lambda: step_screen(1, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app)
        screen = app.screen
        assert isinstance(screen, DatasetStep)
        preview: Preview = screen.preview
        assert preview.detected.startswith("detected alpaca")
        first = preview.rows[0]
        text = "".join(first.pieces)
        assert text.startswith("<|im_start|>user\nName a primary colour.")
        pairs = list(zip(first.pieces, first.trained, strict=True))
        trained = "".join(piece for piece, kept in pairs if kept)
        masked = "".join(piece for piece, kept in pairs if not kept)
        assert trained == "Red.<|im_end|>\n"  # the reply and its end marker, never the prompt
        assert masked.endswith("<|im_start|>assistant\n")

        longest = max(preview.lengths)
        field = screen.query_one("#field-model-max_seq_length", FormField)
        field.control.value = str(longest - 1)
        await pilot.pause()
        histogram = screen.query_one(LengthHistogram)
        assert histogram.max_length == longest - 1
        over = sum(1 for n in preview.lengths if n > longest - 1)
        assert histogram.border_subtitle == f"{over} truncated at {longest - 1}"


async def test_bad_path_shows_the_engines_error() -> None:
    state = WizardState()
    state.set_text("dataset.path", "/nowhere/data.jsonl")
    app = SceneApp(lambda: step_screen(1, state))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app)
        await pilot.pause()
        shown = str(app.screen.query_one("#dataset-preview").render())
        assert "Dataset file not found: /nowhere/data.jsonl" in shown

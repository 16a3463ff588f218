"""A few rows as the model will see them: rendered through the chat template, token by token,
with the trained tokens (labels kept) set apart from the masked ones (labels -100)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content
from textual.widgets import Static

TRAINED = "$text-success on $success-muted"
MASKED = "$foreground-muted"


@dataclass(frozen=True)
class PreviewRow:
    pieces: list[str]  # the decoded text of each token
    trained: list[bool]  # label != -100
    truncated: bool = False

    @property
    def trained_count(self) -> int:
        return sum(self.trained)


def legend() -> Content:
    return Content.assemble(
        ("trained", TRAINED),
        " loss on these tokens   ",
        ("masked", MASKED),
        " context only (labels -100)",
    )


def row_content(row: PreviewRow, index: int) -> Content:
    head = f"row {index + 1}: {len(row.pieces)} tokens, {row.trained_count} trained"
    parts: list[Content | tuple[str, str] | str] = [
        Content.styled(head + (", truncated" if row.truncated else ""), "bold"),
        "\n",
    ]
    for piece, trained in zip(row.pieces, row.trained, strict=True):
        # Newlines stay visible inside a highlighted span, then break the line.
        shown = piece.replace("\n", "↵\n")
        parts.append((shown, TRAINED if trained else MASKED))
    return Content.assemble(*parts)


class TokenPreview(Static):
    """Shows a status line ("loading tokenizer…"), an error, or the rendered rows."""

    DEFAULT_CSS = """
    TokenPreview { height: auto; width: 1fr; }
    """

    def show_rows(self, rows: list[PreviewRow]) -> None:
        blocks = [legend(), *(row_content(row, i) for i, row in enumerate(rows))]
        self.update(Content("\n\n").join(blocks))

    def show_status(self, text: str, style: str = "$foreground-muted") -> None:
        self.update(Content.styled(text, style))

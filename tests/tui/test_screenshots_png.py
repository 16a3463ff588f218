"""screenshots/*.png: the PNG keeps the terminal's grid (svg_to_png in tests/tui/scenes)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.tui.scenes.run_screens import svg_to_png

CELL = 12.2  # Textual's SVG cell width at its default font size


def svg_with(text: str, cells: int) -> str:
    """A one-line Textual-style SVG: one text run spanning ``cells`` cells from x=0."""
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="800" height="40" viewBox="0 0 800 40">'
        "<style>.cell { font-family: Fira Code, monospace; font-size: 20px; fill: #000000 }</style>"
        '<rect width="800" height="40" fill="#ffffff"/>'
        f'<text class="cell" x="0" y="25" textLength="{cells * CELL}">{text}</text></svg>'
    )


def rightmost_ink(path: Path) -> int:
    image = Image.open(path).convert("L")
    width, height = image.size
    pixels = image.load()
    inked = [x for x in range(width) for y in range(height) if pixels[x, y] < 128]
    return max(inked)


def test_braille_plot_dots_stay_in_their_cells(tmp_path: Path) -> None:
    # The loss chart's dots are braille; DejaVu Sans draws them wider than a cell, and cairosvg
    # ignores textLength, so a long run of them spilled past the chart into the next panel.
    cells = 40
    svg_to_png(svg_with("\u28ff" * cells, cells), tmp_path / "dots.png")
    assert rightmost_ink(tmp_path / "dots.png") <= cells * CELL + 2


def test_text_runs_keep_their_text(tmp_path: Path) -> None:
    svg_to_png(svg_with("loss 0.0107 &amp; lr", 20), tmp_path / "text.png")
    assert 0 < rightmost_ink(tmp_path / "text.png") <= 20 * CELL + 2

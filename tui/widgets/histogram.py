"""Token-length histogram: ten buckets up to the max length, plus the rows it would truncate."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

BUCKETS = 10


def buckets(lengths: list[int], max_length: int) -> tuple[list[tuple[int, int]], int]:
    """((upper bound, rows) x 10, rows longer than max_length): the engine's bucket bounds."""
    bounds = sorted({max(1, -(-max_length * k // BUCKETS)) for k in range(1, BUCKETS + 1)})
    counts = [0] * len(bounds)
    over = 0
    for length in lengths:
        if length > max_length:
            over += 1
            continue
        counts[next(i for i, bound in enumerate(bounds) if length <= bound)] += 1
    return list(zip(bounds, counts, strict=True)), over


class LengthHistogram(Widget):
    """Horizontal bars, one per length bucket; the truncated rows get their own bar."""

    DEFAULT_CSS = """
    LengthHistogram { height: auto; width: 1fr; }
    """
    lengths: reactive[tuple[int, ...]] = reactive((), layout=True)
    max_length: reactive[int] = reactive(2048)

    def show(self, lengths: list[int], max_length: int) -> None:
        self.lengths = tuple(lengths)
        self.max_length = max_length

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        return BUCKETS + 2 if self.lengths else 1

    def render(self) -> Content:
        if not self.lengths:
            return Content.styled("no lengths yet", "$foreground-muted")
        rows, over = buckets(list(self.lengths), self.max_length)
        label_width = len(f"≤{self.max_length}") + 1
        tail = len(f" {max([count for _, count in rows] + [over])} truncated")
        bar_room = max(4, self.size.width - label_width - 1 - tail)
        peak = max([count for _, count in rows] + [over, 1])
        lines = []
        for bound, count in rows:
            bar = "█" * round(bar_room * count / peak)
            lines.append(
                Content.assemble(
                    f"≤{bound}".rjust(label_width), " ", (bar, "$primary"), f" {count}"
                )
            )
        bar = "█" * round(bar_room * over / peak)
        style = "$text-error" if over else "$foreground-muted"
        lines.append(
            Content.assemble(
                (f">{self.max_length}".rjust(label_width), style),
                " ",
                (bar, "$error"),
                (f" {over} truncated", style),
            )
        )
        n, longest = len(self.lengths), max(self.lengths)
        mean = sum(self.lengths) / n
        lines.append(
            Content.styled(
                f"{n} rows, mean {mean:.0f} tokens, longest {longest}", "$foreground-muted"
            )
        )
        return Content("\n").join(lines)

"""Train/eval loss over steps (plotext) with optional EMA smoothing, and the learning rate.

Train and eval differ by marker as well as colour, so the chart reads in 16 colours and under
NO_COLOR. Series colours come from the app theme's variables.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Sparkline, Static
from textual_plotext import PlotextPlot

MAX_POINTS = 400  # far more than any terminal has columns; keeps a redraw cheap on long runs


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out: list[float] = []
    for value in values:
        out.append(value if not out else alpha * value + (1 - alpha) * out[-1])
    return out


def thin(xs: list[int], ys: list[float], limit: int = MAX_POINTS) -> tuple[list[int], list[float]]:
    if len(xs) <= limit:
        return xs, ys
    stride = len(xs) / limit
    picks = sorted({int(i * stride) for i in range(limit)} | {len(xs) - 1})
    return [xs[i] for i in picks], [ys[i] for i in picks]


class LossChart(Vertical):
    DEFAULT_CSS = """
    LossChart { height: 1fr; }
    LossChart > PlotextPlot { height: 1fr; min-height: 5; }
    LossChart > Horizontal { height: 1; }
    LossChart #lr-label { width: 12; padding-right: 1; color: $text-muted; }
    LossChart #lr-spark { width: 1fr; }
    """

    smoothing: reactive[bool] = reactive(False)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.eval_steps: list[int] = []
        self.eval_losses: list[float] = []
        self.lrs: list[float] = []
        self.resumes: list[int] = []  # steps a later segment of the run resumed from

    def compose(self) -> ComposeResult:
        yield PlotextPlot()
        with Horizontal():
            yield Static("lr  -", id="lr-label")
            yield Sparkline([], id="lr-spark")

    def on_mount(self) -> None:
        self.redraw()

    def add_step(self, step: int, loss: float, lr: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.lrs.append(lr)

    def add_eval(self, step: int, loss: float) -> None:
        self.eval_steps.append(step)
        self.eval_losses.append(loss)

    def add_resume(self, step: int) -> None:
        """A resume from a checkpoint at ``step``: a marker there. Points logged after it by a
        process that died before its next checkpoint are replaced by the resumed ones."""
        keep = [i for i, s in enumerate(self.steps) if s <= step]
        self.steps = [self.steps[i] for i in keep]
        self.losses = [self.losses[i] for i in keep]
        self.lrs = [self.lrs[i] for i in keep]
        pairs = zip(self.eval_steps, self.eval_losses, strict=True)
        evals = [(s, loss) for s, loss in pairs if s <= step]
        self.eval_steps, self.eval_losses = [s for s, _ in evals], [loss for _, loss in evals]
        self.resumes.append(step)

    def watch_smoothing(self) -> None:
        self.redraw()

    def _colour(self, variable: str) -> tuple[int, int, int]:
        return Color.parse(self.app.theme_variables.get(variable, "white")).rgb

    def redraw(self) -> None:
        if not self.is_mounted:
            return
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        if self.losses:
            ys = ema(self.losses) if self.smoothing else self.losses
            xs, ys = thin(self.steps, ys)
            label = "train (EMA)" if self.smoothing else "train"
            plt.plot(xs, ys, marker="braille", color=self._colour("primary"), label=label)
        if self.eval_losses:
            plt.scatter(
                self.eval_steps,
                self.eval_losses,
                marker="x",
                color=self._colour("warning"),
                label="eval",
            )
        for step in self.resumes:  # each resume of the run, as a vertical line
            plt.vline(step, color=self._colour("accent"))
        if self.resumes:
            plt.title(f"resumed at step {', '.join(map(str, self.resumes))}")
        if not self.losses:
            plt.title("waiting for the first step")
        plot.refresh()
        if self.lrs:
            self.query_one("#lr-label", Static).update(f"lr {self.lrs[-1]:.2e}", layout=False)
            # A new list each time: thin() hands back self.lrs itself below its limit, and
            # the reactive saw that same (appended-to) list as unchanged, so the sparkline kept
            # its first draw, one point: a solid bar.
            self.query_one("#lr-spark", Sparkline).data = list(thin(self.steps, self.lrs, 200)[1])

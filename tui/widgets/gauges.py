"""Hardware: a VRAM gauge and history per GPU with utilisation, temperature and power; process
RAM and CPU. Without a GPU it says "CPU run" rather than drawing empty gauges."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from engine.core.events import GpuSample, HardwareSample

HISTORY = 120


def bar(fraction: float, width: int) -> str:
    """A text gauge in theme colours; its length alone carries the value (NO_COLOR-safe)."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    colour = "$error" if fraction > 0.92 else "$warning" if fraction > 0.8 else "$success"
    return f" [{colour}]{'█' * filled}[/][$text-muted]{'░' * (width - filled)}[/]"


def gib(mib: float) -> str:
    return f"{mib / 1024:.1f}"


def _na(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def gpu_text(gpu: GpuSample, width: int) -> str:
    """Two lines per GPU: the VRAM gauge, then util, temperature, power and peak."""
    fraction = gpu.memory_used_mib / gpu.memory_total_mib if gpu.memory_total_mib else 0.0
    amount = f" {gib(gpu.memory_used_mib)}/{gib(gpu.memory_total_mib)}G"
    gauge = bar(fraction, min(max(width - len(amount) - 6, 4), 40))
    peak = f" pk {gib(gpu.memory_peak_mib)}" if gpu.memory_peak_mib is not None else ""
    details = (
        f"util {_na(gpu.utilization_pct, '{:.0f}%')} {_na(gpu.temperature_c, '{:.0f}°C')} "
        f"{_na(gpu.power_w, '{:.0f}W')}{peak}"
    )
    name = f"  [$text-muted]{gpu.name}[/]" if width - len(details) > len(gpu.name) + 2 else ""
    return f"[b]GPU{gpu.index}[/]{gauge}{amount}\n{details}{name}"


class HardwarePanel(Vertical):
    DEFAULT_CSS = """
    HardwarePanel { height: auto; }
    HardwarePanel Static { height: 2; }
    HardwarePanel Sparkline { height: 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sample: HardwareSample | None = None
        self.vram: dict[int, list[float]] = {}
        self.ram: list[float] = []
        self._gpu_count = -1

    def compose(self) -> ComposeResult:
        yield Static("[$text-muted]waiting for a reading[/]", id="process")

    def add_sample(self, sample: HardwareSample) -> None:
        self.sample = sample
        self.ram = [*self.ram, sample.process_rss_mib][-HISTORY:]
        for gpu in sample.gpus:
            self.vram[gpu.index] = [*self.vram.get(gpu.index, []), gpu.memory_used_mib][-HISTORY:]

    def show(self) -> None:
        sample = self.sample
        if sample is None:
            return
        if len(sample.gpus) != self._gpu_count:
            self._rebuild(sample)
        width = self.content_region.width or 28  # before the first layout: the 80-column width
        for gpu in sample.gpus:
            # Fixed heights (two lines a GPU): a new reading repaints, it never re-lays out.
            self.query_one(f"#gpu-{gpu.index}", Static).update(gpu_text(gpu, width), layout=False)
            spark = self.query_one(f"#vram-{gpu.index}", Sparkline)
            spark.display = len(self.vram[gpu.index]) > 1
            spark.data = self.vram[gpu.index]
        where = f"[b]CPU run[/] · system RAM {sample.system_memory_used_pct:.0f}%\n"
        self.query_one("#process", Static).update(
            f"{'' if sample.gpus else where}"
            f"RAM {gib(sample.process_rss_mib)} GiB · CPU {sample.process_cpu_pct:.0f}%",
            layout=False,
        )
        if not sample.gpus:
            spark = self.query_one("#ram-spark", Sparkline)
            spark.display = len(self.ram) > 1  # one reading draws a meaningless full bar
            spark.data = self.ram

    def on_resize(self) -> None:
        self.show()

    def _rebuild(self, sample: HardwareSample) -> None:
        self._gpu_count = len(sample.gpus)
        self.query_one("#process", Static).styles.height = 1 if sample.gpus else 2
        for child in list(self.children):
            if child.id != "process":
                child.remove()
        widgets = []
        for gpu in sample.gpus:
            widgets += [Static(id=f"gpu-{gpu.index}"), Sparkline([], id=f"vram-{gpu.index}")]
        if not sample.gpus:
            widgets.append(Sparkline([], id="ram-spark"))
        self.mount_all(widgets, before="#process" if sample.gpus else None)

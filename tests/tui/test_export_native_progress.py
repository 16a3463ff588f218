"""Export progress measures progress: GGUF tensors and bytes written, bytes on disk for library
writes, a dialog clock that moves between messages with a pulsing bar where nothing is measured,
and an ETA; headless, phase lines on stderr with measured steps logged every few seconds."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from textual.widgets import Checkbox, Input, ProgressBar, Static

from engine.export import Exported, ExportReport, gguf_writer
from engine.export.files import size_progress
from tests.tui.scenes.run_screens import SceneApp
from tests.tui.scenes.synthetic import make_run_dir
from tui.cli.export import StderrProgress
from tui.screens.export import ExportScreen


def test_gguf_writing_reports_tensors_and_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, float | None]] = []
    plan = gguf_writer.plan_gguf(tiny_model_dir)
    gguf_writer.write_gguf(
        plan, tmp_path / "t.gguf", "f16", name="t", progress=lambda m, f=None: seen.append((m, f))
    )
    measured = [(m, f) for m, f in seen if f is not None]
    count = len(plan.tensors)
    assert len(measured) == count
    assert measured[0][0].startswith(f"GGUF f16: tensor 1/{count}, ")
    assert measured[-1][0].startswith(f"GGUF f16: tensor {count}/{count}, ")
    assert "written" in measured[-1][0] and measured[-1][1] == 1.0
    fractions = [f for _, f in measured]
    assert fractions == sorted(fractions) and len(set(fractions)) == count  # by bytes, rising


def test_size_progress_reports_the_bytes_on_disk(tmp_path: Path) -> None:
    seen: list[tuple[str, float | None]] = []
    target = tmp_path / "out.bin"
    report = lambda m, f=None: seen.append((m, f))
    with size_progress(target, 4 << 20, report, "writing"), open(target, "wb") as handle:
        for _ in range(4):
            handle.write(bytes(1 << 20))
            handle.flush()
            time.sleep(0.3)
    assert seen and all(m.startswith("writing: ") and "of ~4.0 MiB" in m for m, _ in seen)
    shares = [f for _, f in seen]
    assert shares == sorted(shares) and 0 < shares[-1] <= 0.99


def test_headless_progress_logs_measured_steps_with_an_eta(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    clock = iter(range(1000))
    monkeypatch.setattr("tui.cli.export.time.monotonic", lambda: float(next(clock)))
    progress = StderrProgress()  # not a terminal: plain lines
    progress.LOG_EVERY = 3.0
    progress("GGUF f16: writing x.gguf", None)
    for index in range(1, 10):
        progress(f"GGUF f16: tensor {index}/10", index / 10)
    progress("verifying x.gguf in llama.cpp", None)
    for second in range(1, 7):
        progress(f"verifying x.gguf in llama.cpp ({second}s)", None)
    lines = err.getvalue().splitlines()
    tensor_lines = [line for line in lines if "tensor" in line]
    assert 2 <= len(tensor_lines) <= 4  # every few seconds, not one line per tensor
    assert all("ETA" in line for line in tensor_lines)
    ticks = [line for line in lines if "llama.cpp (" in line]
    assert 1 <= len(ticks) <= 3  # the waiting clock is logged, throttled


@pytest.mark.anyio
async def test_the_dialog_clock_moves_while_a_step_reports_nothing(
    tmp_path: Path, monkeypatch, wait_for
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ExportScreen, "PROGRESS_INTERVAL", 0.0)
    gate = threading.Event()

    def fake_export(run, formats, *, progress, **options):
        progress("merged: loading the base", None)  # a step with no measure: nothing follows
        assert gate.wait(20)
        for index in range(1, 5):
            progress(f"GGUF f16: tensor {index}/8", index / 8)
            time.sleep(0.6)
        assert gate.wait(20)
        path = Path(options["out"]) / "tiny-f16.gguf"
        return ExportReport(Path(run), Path(options["out"]), [Exported("gguf", path, 2048, [])])

    app = SceneApp(lambda: ExportScreen(make_run_dir(tmp_path), exporter=fake_export))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        status = lambda: str(screen.query_one("#status", Static).render())
        bar = screen.query_one("#progress", ProgressBar)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "loading the base" in status())
        first = status()
        assert bar.total is None  # indeterminate: the bar pulses while nothing is measured
        await wait_for(pilot, lambda: status() != first, timeout=3)  # the elapsed time moves
        assert "loading the base" in status()
        gate.set()
        await wait_for(pilot, lambda: "tensor 4/8" in status(), timeout=10)
        assert bar.total == 100 and bar.percentage == 0.5
        assert "50%" in status() and "ETA " in status()
        await wait_for(pilot, lambda: not screen.running, timeout=10)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from tests.engine.export.test_export import make_run

    return make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)


@pytest.mark.anyio
async def test_a_dashboard_export_that_dies_leaves_this_process_running(
    tiny_run: Path, tmp_path: Path, monkeypatch, wait_for
) -> None:
    # The dialog's default exporter: the export's own process is killed mid-merge (what the
    # OOM killer does). Before, the export ran in this process, the one that trains.
    from engine.export import native

    monkeypatch.setenv(native.FAULT_ENV, "merged-save:SIGKILL")
    app = SceneApp(lambda: ExportScreen(tiny_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        screen.query_one("#out", Input).value = str(tmp_path / "out")
        screen.query_one("#fmt-adapter", Checkbox).value = False
        screen.query_one("#fmt-merged", Checkbox).value = True
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not screen.running, timeout=180)
        result = str(screen.query_one("#result", Static).render())
        assert "SIGKILL" in result and "out-of-memory" in result
        assert "export failed" in str(screen.query_one("#status", Static).render())
        assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".partial-")]


def test_on_a_terminal_the_step_line_keeps_a_moving_clock(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    clock = iter([0.0, 0.0, 1.0, 2.0, 3.0, 3.5, 4.0])
    monkeypatch.setattr("tui.cli.export.time.monotonic", lambda: next(clock))
    progress = StderrProgress()
    progress.tty = True  # as on a terminal
    progress("merged: loading the base", None)  # a step with no measure of its own
    progress.tick()
    progress.tick()
    progress("merged: saving safetensors", None)
    progress("merged: saving safetensors: 1.0 MiB of ~4.0 MiB", 0.25)
    progress.close()
    text = err.getvalue()
    first, second = text.split("\n")[:2]
    stamps = [part.split("]")[0] for part in first.split("\r") if part]
    assert stamps == ["[   0.0s", "[   1.0s", "[   2.0s"]  # the clock moved on the same line
    assert "merged: loading the base" in first.split("\r")[-1]
    assert "saving safetensors: 1.0 MiB of ~4.0 MiB (25%" in second
    assert text.endswith("\n")  # closed: the next output starts on its own line

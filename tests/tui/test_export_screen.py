"""The export dialog at 80×24: a real adapter export, validation, refusals, progress, snapshot."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, Input, ProgressBar, Static

from engine.export import Exported, ExportReport
from engine.export.files import human_size, path_size
from tests.engine.export.test_export import make_run
from tests.tui.scenes.run_screens import SceneApp
from tests.tui.scenes.synthetic import export_scene, exported, make_run_dir
from tui.screens.export import ExportScreen

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)


def text(screen: ExportScreen, widget_id: str) -> str:
    return str(screen.query_one(f"#{widget_id}", Static).render())


async def set_out(pilot: Pilot, folder: Path) -> None:
    field = pilot.app.screen.query_one("#out", Input)
    field.value = str(folder)
    await pilot.pause()


async def export(pilot: Pilot, wait_for) -> ExportScreen:
    screen = pilot.app.screen
    assert isinstance(screen, ExportScreen)
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: not screen.running, timeout=120)
    return screen


async def test_exports_the_adapter_and_lists_it(tiny_run: Path, tmp_path: Path, wait_for) -> None:
    app = SceneApp(lambda: ExportScreen(tiny_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert screen.query_one("#fmt-adapter", Checkbox).has_focus  # keyboard from the start
        assert screen.query_one("#fmt-adapter", Checkbox).value
        await set_out(pilot, tmp_path / "out")
        await export(pilot, wait_for)
        adapter = tmp_path / "out" / "adapter"
        assert (adapter / "adapter_config.json").is_file()
        result = text(screen, "result")
        assert f"Written to {tmp_path / 'out'}" in result
        assert "adapter" in result and human_size(path_size(adapter)) in result
        assert "PeftModel.from_pretrained" in result  # the round-trip check is shown
        assert "1 item written" in text(screen, "status")
        assert screen.query_one("#progress", ProgressBar).percentage == 1.0


async def test_bad_quant_shows_the_cli_message_as_you_type(tmp_path: Path, monkeypatch, wait_for):
    monkeypatch.chdir(tmp_path)
    app = SceneApp(lambda: ExportScreen(make_run_dir(tmp_path)))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await app.workers.wait_for_complete()  # engine.export loads off the UI thread
        screen.query_one("#fmt-gguf", Checkbox).focus()
        await pilot.press("space")
        screen.query_one("#quants", Input).focus()
        await pilot.press("end", "comma", "q", "9")  # "q" is typed, never a shortcut
        await pilot.pause()
        assert screen.query_one("#quants", Input).value == "q8_0,q9"
        error = text(screen, "quant-error")
        assert "Unknown GGUF quantization: q9." in error and "Use one or more of: f16" in error
        assert screen.query_one("#quants", Input).has_class("-invalid")
        assert screen.query_one("#run-export", Button).disabled
        assert "Fix the GGUF types first" in text(screen, "status")
        await pilot.press("backspace", "backspace", "backspace")
        await pilot.pause()
        assert screen.query_one("#quant-error").has_class("-hidden")
        assert not screen.query_one("#run-export", Button).disabled


async def test_existing_target_is_refused_then_forced(
    tiny_run: Path, tmp_path: Path, wait_for
) -> None:
    kept = tmp_path / "out" / "adapter" / "keep.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    app = SceneApp(lambda: ExportScreen(tiny_run))
    async with app.run_test(size=(80, 24)) as pilot:
        await set_out(pilot, tmp_path / "out")
        screen = await export(pilot, wait_for)
        result = text(screen, "result")
        assert "Export target already exists" in result and "Traceback" not in result
        assert "Tick 'force' to replace it" in result  # the hint, in the dialog's words
        assert "failed" in text(screen, "status")
        assert sorted(p.name for p in kept.parent.iterdir()) == ["keep.txt"]
        assert kept.read_text() == "mine"
        screen.query_one("#force", Checkbox).focus()  # change the settings and try again
        await pilot.press("space")
        await export(pilot, wait_for)
        assert "1 item written" in text(screen, "status")
        assert (kept.parent / "adapter_config.json").is_file() and not kept.exists()


async def test_progress_reaches_the_dialog_while_the_export_runs(
    tmp_path: Path, monkeypatch, wait_for
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ExportScreen, "PROGRESS_INTERVAL", 0.0)
    gate, calls = threading.Event(), []

    def fake_export(run, formats, *, progress, **options):
        calls.append((formats, options))
        progress("merged: loading the base", None)
        progress("GGUF f16: blk.0.attn_q.weight", 0.25)
        assert gate.wait(10)
        progress("GGUF f16: blk.1.attn_q.weight", 0.75)
        progress("export: done", 1.0)
        path = Path(options["out"]) / "tiny-f16.gguf"
        return ExportReport(Path(run), Path(options["out"]), [Exported("gguf", path, 2048, [])])

    app = SceneApp(lambda: ExportScreen(make_run_dir(tmp_path), exporter=fake_export))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        bar = screen.query_one("#progress", ProgressBar)
        for widget_id in ("fmt-adapter", "fmt-gguf"):
            screen.query_one(f"#{widget_id}", Checkbox).focus()
            await pilot.press("space")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "blk.0" in text(screen, "status"))
        assert bar.percentage == 0.25 and screen.running
        assert screen.query_one("#run-export", Button).disabled  # no second export meanwhile
        gate.set()
        await wait_for(pilot, lambda: not screen.running)
        assert bar.percentage == 1.0
        assert "tiny-f16.gguf" in text(screen, "result") and "2.0 KiB" in text(screen, "result")
    ((formats, options),) = calls
    assert formats == ["gguf"] and options["quants"] == ["q8_0"] and options["dtype"] is None


async def test_a_run_without_final_has_nothing_to_export(tmp_path: Path) -> None:
    app = SceneApp(lambda: ExportScreen(tmp_path))
    async with app.run_test(size=(80, 24)):
        assert "Nothing can be exported yet" in text(app.screen, "not-ready")
        assert not app.screen.query(Button)


def test_snapshot_after_a_gguf_export(snap_compare, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative run paths, the same on every box
    make_run_dir(tmp_path)
    assert snap_compare(export_scene(), terminal_size=(80, 24), run_before=exported)

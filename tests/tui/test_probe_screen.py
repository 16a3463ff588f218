"""The review screen's Probe: the app runs it on a worker and the estimate panel shows measured
against predicted figures (stubbed for speed, and once for real on the tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, Static

from engine.diagnose.probe import DEFAULT_STEPS, ProbeResult
from tests.tui.scenes.wizard import settle
from tui.app import FinettyApp
from tui.screens.review import ReviewScreen

pytestmark = pytest.mark.anyio

FAKE = ProbeResult(
    preset="smollm2-demo",
    device="cpu",
    on_gpu=False,
    steps=4,
    micro_batch=8,
    grad_accum=1,
    seq_len=256,
    peak_kind="process RSS",
    measured_peak_gib=1.87,
    predicted_peak_gib=1.62,
    measured_reserved_gib=None,
    capacity_gib=15.6,
    fits=True,
    measured_step_s=3.21,
    predicted_step_s=2.75,
    tokens_per_s=118.0,
    predicted_tokens_per_s=140.0,
    step_times_s=(5.0, 3.2, 3.21, 3.3),
    total_steps=60,
    eta_s=192.6,
    predicted_eta_s=165.0,
    hourly_price=None,
    cost_usd=None,
    predicted_cost_usd=None,
)


def estimate_text(app) -> str:
    return str(app.screen.query_one("#review-estimate", Static).render())


async def test_probe_button_shows_measured_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait_for
) -> None:
    import engine.diagnose.probe

    calls: list[tuple] = []

    def fake_probe(preset, steps, runs_root, *, progress=None, hourly_price=None):
        calls.append((preset.name, steps, runs_root))
        progress("step 1/4: 5.00 s")
        return FAKE

    monkeypatch.setattr(engine.diagnose.probe, "probe", fake_probe)
    app = FinettyApp(start_screen="review", preset_path="smollm2-demo", runs_root=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await settle(app)
        app.screen.query_one("#probe", Button).press()
        await wait_for(pilot, lambda: "Probe of smollm2-demo" in estimate_text(app))
        shown = estimate_text(app)
        assert "measured" in shown and "predicted" in shown
        assert "1.87 GiB" in shown and "1.62 GiB" in shown and "+15%" in shown
        assert "3.21 s" in shown and "ETA, 60 steps" in shown
        assert calls == [("smollm2-demo", DEFAULT_STEPS, tmp_path)]
        assert not app.screen.probing
        assert not app.screen.query_one("#probe", Button).disabled


async def test_probe_failure_is_shown_with_its_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait_for
) -> None:
    import engine.diagnose.probe
    from engine.core.errors import OutOfMemoryError

    def failing_probe(preset, steps, runs_root, **kwargs):
        raise OutOfMemoryError("CUDA out of memory at micro-batch 8.", hint="Lower the batch.")

    monkeypatch.setattr(engine.diagnose.probe, "probe", failing_probe)
    app = FinettyApp(start_screen="review", preset_path="smollm2-demo", runs_root=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await settle(app)
        app.screen.query_one("#probe", Button).press()
        await wait_for(pilot, lambda: "probe failed" in estimate_text(app))
        shown = estimate_text(app)
        assert "CUDA out of memory" in shown and "Lower the batch." in shown


async def test_real_probe_of_the_tiny_model(make_preset, tmp_path: Path, wait_for) -> None:
    from engine.config.presets import to_yaml

    preset_file = tmp_path / "tiny.yaml"
    preset_file.write_text(to_yaml(make_preset()), encoding="utf-8")
    runs = tmp_path / "runs"
    app = FinettyApp(start_screen="review", preset_path=str(preset_file), runs_root=runs)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await settle(app)
        app.screen.query_one("#probe", Button).press()
        await wait_for(pilot, lambda: "Probe of tiny" in estimate_text(app), timeout=180)
        shown = estimate_text(app)
        assert "peak (RSS)" in shown and "step time" in shown and "tokens/s" in shown
        assert "ETA, 6 steps" in shown
    assert not runs.exists() or list(runs.iterdir()) == []

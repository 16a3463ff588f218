"""Snapshots at 80x24 of the home screen, each wizard step and the review, from the same scenes
that `python -m tests.tui.scenes.wizard` writes to screenshots/."""

from __future__ import annotations

import pytest

from tests.tui.scenes.wizard import SCROLL, scenes, scroll_to, settle
from tui import wizard_device

NAMES = ["home", "wizard-model", "wizard-dataset", "wizard-method", "wizard-training", "review"]


@pytest.mark.parametrize("name", NAMES)
def test_scene(name: str, snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    # scenes() pins a GPU and an empty user-presets folder; put both back afterwards.
    monkeypatch.setattr(wizard_device, "device_spec", wizard_device.device_spec)
    monkeypatch.setenv("FINETTY_PRESETS", "")
    make = scenes()[name]

    async def before(pilot) -> None:
        await settle(pilot.app)
        if name in SCROLL:
            await scroll_to(pilot.app, SCROLL[name])
        await pilot.pause()

    assert snap_compare(make(), terminal_size=(80, 24), run_before=before)

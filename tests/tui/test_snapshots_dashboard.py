"""Snapshots at 80×24 of the run screens, from the same scenes as screenshots/: the recorded demo
runs replayed (tests/data/demo_run*), and a scripted exporter for the export dialog."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.scenes.run_screens import ask, chat_scene, dashboard_scene, finished_scene, gpu_scene
from tests.tui.scenes.synthetic import dpo_events, export_scene, make_run_dir


def test_dashboard_mid_run(snap_compare) -> None:
    assert snap_compare(dashboard_scene(), terminal_size=(80, 24))


def test_dashboard_finished(snap_compare) -> None:
    assert snap_compare(finished_scene(), terminal_size=(80, 24))


def test_dashboard_on_a_gpu(snap_compare) -> None:
    assert snap_compare(gpu_scene(), terminal_size=(80, 24))


def test_dashboard_of_a_dpo_run(snap_compare) -> None:
    # The preference margin and accuracy beside the loss, and held-out preference accuracy.
    assert snap_compare(dashboard_scene(dpo_events()), terminal_size=(80, 24))


def test_chat_side_by_side(snap_compare) -> None:
    assert snap_compare(chat_scene(), terminal_size=(80, 24), run_before=ask)


def test_export(snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the scene shows a relative run path, the same on every box
    make_run_dir(tmp_path)
    assert snap_compare(export_scene(), terminal_size=(80, 24))


def test_help(snap_compare) -> None:
    assert snap_compare(dashboard_scene(), terminal_size=(80, 24), press=["question_mark"])

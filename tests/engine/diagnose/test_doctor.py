"""`finetty doctor` on this CPU box: every check reports, nothing raises, non-ok rows carry a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.diagnose import doctor
from engine.diagnose.doctor import Check, checks_to_json, run_checks


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests
    monkeypatch.setenv("FINETTY_RUNS", str(tmp_path / "runs"))


def test_run_checks_reports_everything_with_fixes() -> None:
    checks = run_checks()
    names = {check.name for check in checks}
    assert {"torch", "bitsandbytes", "flash-attn", "liger-kernel", "hub", "llama.cpp"} <= names
    assert any(name.startswith("gpu") for name in names)
    assert any(name.startswith("disk") for name in names) and "presets" in names
    for check in checks:
        assert check.status in ("ok", "warn", "fail", "info")
        assert check.detail
        if check.status != "ok":
            assert check.fix and "\n" not in check.fix, check


def test_no_gpu_is_reported_not_failed() -> None:
    if doctor.detect_gpus():
        pytest.skip("this machine has a GPU")
    gpu = [check for check in run_checks() if check.name.startswith("gpu")]
    assert len(gpu) == 1 and gpu[0].status == "info" and "no NVIDIA GPU" in gpu[0].detail
    assert all(check.status != "fail" for check in doctor.check_torch())


def test_hub_offline_is_honoured() -> None:
    (hub,) = doctor.check_hub()
    assert hub.status == "info" and "HF_HUB_OFFLINE" in hub.detail


def test_disk_check_measures_a_folder_not_made_yet(tmp_path: Path) -> None:
    runs = [check for check in doctor.check_disk() if check.name == "disk: runs"]
    assert runs and str(tmp_path / "runs") in runs[0].detail and "GiB free" in runs[0].detail


def test_a_crashing_check_becomes_a_fail_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def check_broken() -> list[Check]:
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "CHECKS", (check_broken, doctor.check_llama_cpp))
    checks = run_checks()
    assert checks[0].name == "broken" and checks[0].status == "fail" and checks[0].fix
    assert len(checks) == 2


def test_json_shape() -> None:
    data = json.loads(json.dumps(checks_to_json(run_checks())))
    assert isinstance(data, list) and data
    for row in data:
        assert set(row) == {"name", "status", "detail", "fix"}

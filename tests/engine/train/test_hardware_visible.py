"""GPU readings follow CUDA_VISIBLE_DEVICES (NVML itself ignores it).

Found by the recorded screenshot run: the demo trained on the CPU with CUDA_VISIBLE_DEVICES=""
on a GPU box, and its hardware panel showed the hidden GPU at 0% all run.
"""

from __future__ import annotations

import pytest

from engine.core.events import RecordingSink
from engine.train.hardware import HardwareMonitor, visible_gpu_indices


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", []),  # every GPU hidden: a CPU run
        ("-1", []),
        ("1", [1]),
        ("2,0", [2, 0]),  # CUDA's order, which PyTorch numbers 0, 1
        ("1, 3", [1, 3]),
        ("0,-1,1", [0]),  # CUDA stops at the first entry that is not an index
        ("GPU-8f4e2c1a-0000-0000-0000-000000000000", None),  # by UUID: read every GPU
    ],
)
def test_visible_gpu_indices(value: str, expected: list[int] | None, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpu_indices() == expected


def test_unset_reads_every_gpu(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu_indices() is None
    assert HardwareMonitor(RecordingSink()).devices is None


def test_monitor_reads_only_the_visible_gpus(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monitor = HardwareMonitor(RecordingSink())
    assert monitor.devices == []
    assert monitor.sample().gpus == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert HardwareMonitor(RecordingSink()).devices == [3, 1]
    # A caller's own list (one rank's GPU under torchrun) still wins.
    assert HardwareMonitor(RecordingSink(), devices=[1]).devices == [1]

"""The device the wizard estimates for: the first GPU here, or the CPU.

A leaf of its own because the draft (tui.wizard_state), the model step and the review step all
ask it; in the model step's module it made the draft and that screen import each other.
Callers read it as ``wizard_device.device_spec()`` so a test or a scene can pin one GPU.
"""

from __future__ import annotations

from functools import lru_cache

from engine.plan.gpus import GpuSpec, detect_gpus, spec_for


@lru_cache(maxsize=1)
def device_spec() -> GpuSpec | None:
    """The first GPU NVML sees (its table entry with its real memory), or None for the CPU."""
    found = detect_gpus()
    return spec_for(found[0]) if found else None

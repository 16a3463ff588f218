"""The dtype rules shared by the hand-written autograd functions (fused and grouped LoRA, the
chunked loss): which dtype their matmuls run in, and how they turn autocast off inside, since
their dtypes are explicit."""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's where it is on, else the input's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def to_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype``, itself when it already is."""
    # A no-op .to() still costs microseconds of host time, hundreds of times a step.
    return tensor if tensor.dtype is dtype else tensor.to(dtype)


class NoAutocast:
    """Autocast off inside the function (its dtypes are explicit); entered only when on."""

    def __init__(self, device_type: str) -> None:
        self.context = (
            torch.autocast(device_type, enabled=False)
            if torch.is_autocast_enabled(device_type)
            else None
        )

    def __enter__(self) -> None:
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)

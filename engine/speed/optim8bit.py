"""bitsandbytes' 8-bit AdamW without a device-wide wait after every parameter.

bitsandbytes' ``Optimizer8bit.step`` calls ``torch.cuda.synchronize()`` after each parameter's
update. Paged optimizers need that (their states move between host and device behind
PyTorch's back); the plain 8-bit AdamW does not: its update kernels run on the current stream
like any other kernel. On the 8B LoRA shape that is 448 waits a step, which leave the GPU
idle between tiny kernels and stop the host from queuing the next step ahead of the GPU.

``SyncFreeAdamW8bit`` is the same class with the same update kernels, called in the same order
on the same states, so its updates are bitwise those of ``bnb.optim.AdamW8bit``
(tests/engine/speed/test_optim8bit.py checks parameters and states after several steps).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def sync_free_adamw8bit() -> type:
    """The class, built on first use: bitsandbytes is imported only by runs that ask for it."""
    import bitsandbytes as bnb
    import torch

    class SyncFreeAdamW8bit(bnb.optim.AdamW8bit):
        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    if len(self.state[p]) == 0:
                        self.init_state(group, p, gindex, pindex)
                    self.prefetch_state(p)
                    self.update_step(group, p, gindex, pindex)
            return loss

    SyncFreeAdamW8bit.__qualname__ = SyncFreeAdamW8bit.__name__
    return SyncFreeAdamW8bit

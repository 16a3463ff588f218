"""The training loop and what drives it: ``Run`` (one run from preset to final save), the
``Trainer`` (steps, accumulation, clipping, eval, checkpoints), health alarms, hardware
readings and the exact-match evaluation.

May import engine.parallel and every layer below it."""

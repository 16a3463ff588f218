"""Planning before anything is loaded: model shapes from config.json, GPU specs, the memory and
time estimate, and the shared rules the engine applies too (steps per epoch, loss chunks,
when CUDA graphs pay), so that an estimate and a run can never disagree.

May import engine.models (the embedded model's files), engine.data, engine.config and
engine.core. Torch-free: an import-linter contract forbids torch here."""

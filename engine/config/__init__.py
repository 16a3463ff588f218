"""The preset: its schema (pydantic, Hugging Face key names), the reader that finds, loads,
overrides and dumps presets, and derived.py: every rule that turns a preset into a run's
settings (trainer settings, loader arguments, precision, CUDA graphs), decided once. Every
other layer reads a run's settings from a validated ``Preset``, never from YAML.

May import engine.core only. Torch-free."""

"""The preset: its schema (pydantic, Hugging Face key names) and the reader that finds, loads,
overrides and dumps presets. Every other layer reads a run's settings from a validated
``Preset``, never from YAML.

May import engine.core only. Torch-free."""

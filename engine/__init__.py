"""finetty's headless engine: config, data, models, training, events. Never imports a UI.

Importing this package is cheap (no torch); heavy modules are imported where they are used.
"""

__version__ = "0.1.0"

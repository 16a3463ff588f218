"""`finetty import`: an Axolotl or LLaMA-Factory training config as a finetty preset.

table.py holds the rows (each source key and what it became), axolotl.py and llamafactory.py
map one source each (llamafactory_data.py its dataset names, through dataset_info.json),
common.py their shared conversions, and build.py reads, detects, validates and writes.
Torch-free, like the rest of config/."""

from engine.config.importers.build import SOURCES, ImportResult, detect_source, import_config
from engine.config.importers.table import STATUSES, Row

__all__ = ["SOURCES", "STATUSES", "ImportResult", "Row", "detect_source", "import_config"]

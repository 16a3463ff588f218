"""`finetty import`: an Axolotl or LLaMA-Factory training config as a finetty preset.

table.py holds the rows (each source key and what it became), axolotl.py and llamafactory.py
map one source each (llamafactory_data.py its dataset names, through dataset_info.json),
common.py their shared conversions, build.py reads, detects and validates, and writer.py
writes the commented preset.
Torch-free, like the rest of config/."""

from engine.config.importers.build import SOURCES, ImportResult, detect_source, import_config
from engine.config.importers.table import STATUSES, Row

__all__ = ["SOURCES", "STATUSES", "ImportResult", "Row", "detect_source", "import_config"]

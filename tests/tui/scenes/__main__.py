"""``python -m tests.tui.scenes [OUT_DIR]``: every screenshot, SVG and PNG at 80x24."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.tui.scenes import run_screens, wizard

out = Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots").resolve()
wizard.main(out)
asyncio.run(run_screens.main(out))

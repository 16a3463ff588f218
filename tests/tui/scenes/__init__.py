"""Scenes of every screen at 80x24: the snapshot tests and screenshots/ (``make screenshots``).

The run screens replay a recorded demo run (tests/data/demo_run, written by record.py); the
wizard screens open the bundled demo preset. ``python -m tests.tui.scenes [OUT_DIR]`` writes
all of them as SVG and PNG.
"""

"""`python -m tui.cli`: the `finetty` command where the package is not installed (torchrun -m)."""

from tui.cli import entry

entry()

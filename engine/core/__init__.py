"""The foundation every layer shares: the error types and exit codes, the typed events the
engine publishes, units and durations as shown, and text made safe for a terminal.

Imports nothing else of finetty, and no torch."""

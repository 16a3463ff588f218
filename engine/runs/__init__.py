"""A run's life on disk: the run directory and its files, the one-writer lock, the state
machine every view derives from, the command channel a running engine listens to, and
checkpoints that are whole or absent.

May import engine.data, engine.config and engine.core."""

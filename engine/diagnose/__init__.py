"""Checks of the machine and of a preset before a real run: ``finetty doctor`` and the fit
probe, which trains a few real steps and compares them with the estimate.

May import engine.train and every layer below it."""

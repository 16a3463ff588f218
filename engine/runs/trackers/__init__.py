"""Experiment trackers (``training.report_to``): event sinks that log a run's name, config,
hardware and metrics through each tracker's own library (TensorBoard, Weights & Biases).

The libraries are optional extras, imported only when a run asks for them. A tracker never
stops training: one that fails raises an Alarm and is switched off (``guard``)."""

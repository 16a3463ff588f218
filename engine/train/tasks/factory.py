"""The one place that turns a preset's ``task`` into the Task the training loop runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.config.derived import reads_pairs
from engine.train.tasks.kto import KtoTask
from engine.train.tasks.preference import PreferenceTask
from engine.train.tasks.preference_loss import PreferenceLossSettings
from engine.train.tasks.sft import SftTask

if TYPE_CHECKING:
    from engine.config.schema import Preset
    from engine.train.tasks.task import Task


def task_for(preset: Preset) -> Task:
    """SFT, or the preference task with the preference section's resolved settings (tasks the
    build cannot train never validate: engine.config.derived.untrainable_reason). GRPO's task
    samples with the run's tokenizer and rewards, so the run builds it; asking here for it is a
    caller's mistake, never a silent SFT run."""
    if preset.task == "grpo":
        raise ValueError("task_for cannot build task: grpo (engine.train.run builds GrpoTask)")
    if not reads_pairs(preset):
        return SftTask()
    settings = PreferenceLossSettings.from_section(preset.preference, preset.task)
    return KtoTask(settings) if settings.task == "kto" else PreferenceTask(settings)


def needs_reference(task: Task) -> bool:
    """Whether ``task`` compares with the reference's log-probs (DPO, KTO; not ORPO, SimPO,
    or DPO with reference_free)."""
    return isinstance(task, PreferenceTask | KtoTask) and task.settings.needs_reference

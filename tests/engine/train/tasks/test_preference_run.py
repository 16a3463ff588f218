"""DPO, ORPO, SimPO and KTO end to end on a tiny random Llama: a finished run, its final adapter,
finite losses and the preference metrics in events.jsonl; the reference log-probs cached and
reused on resume, with a resumed run's losses equal to an uninterrupted one's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engine.core.errors import EXIT_OK, EXIT_STOPPED
from engine.core.events import (
    Event,
    LogLine,
    PreferenceAccuracy,
    Progress,
    RecordingSink,
    RunStarted,
    Step,
)
from engine.train.run import Run
from engine.train.tasks.kto import KTO_METRICS
from engine.train.tasks.pair_scores import CACHE_NAME
from engine.train.tasks.preference_loss import PAIR_METRICS
from tests.engine.runs.test_run_integrity import StopAtStep

METRICS = set(PAIR_METRICS)


@pytest.mark.parametrize("task", ["dpo", "orpo", "simpo", "kto"])
def test_a_preference_run_trains_to_a_final_adapter(
    task: str, make_pair_preset, tmp_path: Path
) -> None:
    sink = RecordingSink()
    result = Run(make_pair_preset(task), sink, runs_root=tmp_path).execute()
    assert result.status == "finished" and result.exit_code == EXIT_OK
    assert (result.run_dir / "final" / "adapter_config.json").is_file()
    steps = sink.of_type(Step)
    assert [step.step for step in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(step.loss) for step in steps)
    expected = METRICS | ({"nll_loss"} if task == "simpo" else set())
    if task == "orpo":
        expected |= {"nll_loss", "log_odds_ratio", "log_odds_chosen"}
    if task == "kto":
        # A step's micro-batches may hold no desirable (or no undesirable) example: those
        # metrics are then left out; kl is always there.
        expected = set(KTO_METRICS)
        assert all("kl" in step.metrics and set(step.metrics) <= expected for step in steps)
        steps = [step for step in steps if set(step.metrics) == expected]
        assert steps
    assert all(set(step.metrics) == expected for step in steps)
    assert all(math.isfinite(value) for step in steps for value in step.metrics.values())
    # events.jsonl carries them too
    logged = [
        json.loads(line)
        for line in (result.run_dir / "events.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "step"
    ]
    assert logged and all(set(entry["metrics"]) <= expected for entry in logged)
    started = sink.of_type(RunStarted)[0]
    names = {"dpo": "DPO", "orpo": "ORPO", "simpo": "SimPO", "kto": "KTO"}
    assert started.task.startswith(names[task])
    assert started.task.endswith("· LoRA")
    # Held-out preference accuracy (the validation pairs), before and after; KTO's validation
    # examples are unpaired, so it has pairs to score only with the built-in set's.
    scores = [(score.stage, score.total) for score in sink.of_type(PreferenceAccuracy)]
    assert scores == ([] if task == "kto" else [("before", 4), ("after", 4)])
    # The reference pass runs for DPO and KTO only; ORPO and SimPO need none.
    assert (result.run_dir / CACHE_NAME).is_file() == (task in ("dpo", "kto"))


def test_dpo_starts_at_log_2_and_lowers_it(make_pair_preset, tmp_path: Path) -> None:
    # At step 0 the policy is the reference: every reward is 0, the sigmoid loss is log 2.
    sink = RecordingSink()
    preset = make_pair_preset("dpo", max_steps=8)
    Run(preset, sink, runs_root=tmp_path).execute()
    steps = sink.of_type(Step)
    assert steps[0].loss == pytest.approx(math.log(2), abs=1e-5)
    assert steps[0].metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert steps[-1].loss < steps[0].loss
    progress = [event for event in sink.of_type(Progress) if event.task == "reference log-probs"]
    assert progress and progress[-1].done == progress[-1].total == 16


def test_resume_reuses_the_reference_and_repeats_the_losses(
    make_pair_preset, tmp_path: Path
) -> None:
    preset = make_pair_preset("dpo")
    whole = RecordingSink()
    Run(preset, whole, runs_root=tmp_path / "a").execute()

    stopper = StopAtStep(2)
    first = Run(preset, stopper, runs_root=tmp_path / "b")
    stopper.run = first
    stopped = first.execute()
    assert stopped.status == "stopped"
    cache = stopped.run_dir / CACHE_NAME
    written = cache.read_bytes()

    resumed_sink = RecordingSink()
    resumed = Run(
        preset, resumed_sink, runs_root=tmp_path / "b", resume_dir=stopped.run_dir
    ).execute()
    assert resumed.status == "finished"
    texts = [event.text for event in resumed_sink.of_type(LogLine)]
    assert any("Reference log-probs of 16 pairs read from the run directory" in t for t in texts)
    assert not [e for e in resumed_sink.of_type(Progress) if e.task == "reference log-probs"]
    assert cache.read_bytes() == written
    # Bit-equal on the CPU: the same reference numbers, data order, RNG and optimizer state.
    ran = [(s.loss, s.metrics) for s in stopper.of_type(Step) + resumed_sink.of_type(Step)]
    assert ran == [(s.loss, s.metrics) for s in whole.of_type(Step)]


class StopWhileScoring(RecordingSink):
    """Asks for a stop as soon as the reference pass reports progress, like `x` or SIGTERM."""

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, Progress) and event.task == "reference log-probs" and self.run:
            self.run.control.stop()


def test_a_stop_during_the_reference_pass_ends_the_run_at_once(
    make_pair_preset, tmp_path: Path
) -> None:
    sink = StopWhileScoring()
    run = Run(make_pair_preset("dpo", per_device_eval_batch_size=1), sink, runs_root=tmp_path)
    sink.run = run
    result = run.execute()
    assert result.status == "stopped" and result.exit_code == EXIT_STOPPED
    assert not sink.of_type(Step) and not (result.run_dir / CACHE_NAME).exists()
    scored = [e.done for e in sink.of_type(Progress) if e.task == "reference log-probs"]
    assert max(scored) < 16  # it did not score every pair first


def test_kto_trains_on_unpaired_rows(make_pair_preset, tmp_path: Path) -> None:
    # KTO's own layout: prompt, completion and a true/false label per row.
    data = tmp_path / "unpaired.jsonl"
    rows = [
        {"prompt": f"Say {i}.", "completion": f"{i}" if i % 3 else f"{i + 1}", "label": i % 3 != 0}
        for i in range(12)
    ]
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    preset = make_pair_preset("kto", max_steps=2)
    preset.dataset.path = str(data)
    sink = RecordingSink()
    result = Run(preset, sink, runs_root=tmp_path / "runs").execute()
    assert result.status == "finished"
    assert all(math.isfinite(step.loss) and "kl" in step.metrics for step in sink.of_type(Step))

"""Exact-match evaluation measures its progress and ends at once on a stop request (issue 17
item 5, issue 18's 45-second SIGTERM): a tiny random Llama with SmolLM2's tokenizer, the
built-in held-out prompts."""

from __future__ import annotations

import time
from pathlib import Path

from engine.config.presets import validate
from engine.core.events import ExactMatch, LogLine, Progress, RecordingSink, StateChanged
from engine.data import builtin_data
from engine.runs.control import RunControl
from engine.train.evaluate import exact_match


def _model(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(
        tiny_model_dir
    )


def test_evaluation_reports_examples_done_with_an_eta(tiny_model_dir: Path) -> None:
    model, tokenizer = _model(tiny_model_dir)
    examples = builtin_data.generate("heldout")[:40]  # two batches: 32 and 8
    events: list[Progress] = []
    result = exact_match(
        model, tokenizer, examples, stage="before", max_new_tokens=12, progress=events.append
    )
    assert isinstance(result, ExactMatch) and result.total == 40
    assert events[0].done == 0 and events[0].eta_s is None
    assert events[-1].done == 40 and events[-1].eta_s == 0
    assert all(e.total == 40 and e.unit == "examples" for e in events)
    assert events[0].task == "exact match before training"
    done = [e.done for e in events]
    assert done == sorted(done) and 32 in done  # each batch's end is reported
    assert any(0 < d < 32 for d in done) or len(events) >= 3


def test_evaluation_stops_within_a_token_of_a_stop_request(tiny_model_dir: Path) -> None:
    model, tokenizer = _model(tiny_model_dir)
    examples = builtin_data.generate("heldout")
    calls = {"n": 0}

    def should_stop() -> bool:  # a stop arrives after the third generated token
        calls["n"] += 1
        return calls["n"] >= 3

    result = exact_match(
        model, tokenizer, examples, stage="after", max_new_tokens=40, should_stop=should_stop
    )
    assert result is None
    assert calls["n"] == 3  # generation ended on the token the stop was seen, not the batch


def test_sigterm_during_the_evaluation_stops_the_run_at_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What the SIGTERM handler does (control.stop) during the evaluation before training: the
    evaluation ends, its partial score is not reported, and the run stops with its checkpoint."""
    from engine.train.run import Run

    preset = validate(
        {
            "name": "tiny-eval",
            "model": {
                "name_or_path": str(tiny_model_dir),
                "dtype": "float32",
                "max_seq_length": 64,
            },
            "dataset": {
                "path": "builtin:finetty-skills",
                "format": "messages",
                "val_size": 0,
                "max_rows": 16,
            },
            "method": "lora",
            "lora": {"r": 2, "lora_alpha": 4},
            "training": {
                "max_steps": 4,
                "save_steps": 0,
                "per_device_train_batch_size": 4,
                "eval_exact_match": True,
            },
        }
    )

    class StopOnProgress(RecordingSink):
        control: RunControl | None = None

        def emit(self, event) -> None:
            super().emit(event)
            if isinstance(event, Progress) and self.control is not None:
                self.control.stop()

    sink = StopOnProgress()
    run = Run(preset, sink, runs_root=tmp_path)
    sink.control = run.control
    began = time.monotonic()
    result = run.execute()
    assert result.status == "stopped", result.error
    assert not sink.of_type(ExactMatch)
    states = [e.state for e in sink.of_type(StateChanged)]
    assert "evaluating" in states and states.index("evaluating") < len(states)
    assert any("skipped: a stop was requested" in e.text for e in sink.of_type(LogLine))
    progress = sink.of_type(Progress)
    assert progress and progress[-1].done < progress[-1].total
    assert time.monotonic() - began < 60

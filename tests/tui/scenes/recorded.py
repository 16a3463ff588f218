"""The recorded demo runs that the screenshots and the run-screen snapshots replay.

tests/data/demo_run/ holds what ``python -m tests.tui.scenes.record`` wrote from a real
``finetty train smollm2-demo`` on a CPU: the run's events.jsonl as the engine wrote it, and
chat.json with the chat pane's greedy replies from the run's base and tuned models.
tests/data/demo_run_gpu/ holds the events of the same command on a GPU (``--events-only``). Nothing here
makes up a number or a reply: a scene shows a prefix of the recorded events (what the live
dashboard showed at that moment) or a recorded reply, and a prompt that was not recorded is an
error rather than an invented answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from engine.core.events import CheckpointSaved, Event, Step, event_from_dict

FIXTURE = Path(__file__).resolve().parents[2] / "data" / "demo_run"
GPU_FIXTURE = FIXTURE.with_name("demo_run_gpu")
EVENTS = FIXTURE / "events.jsonl"
CHAT = FIXTURE / "chat.json"


@cache
def recorded_events(fixture: Path = FIXTURE) -> tuple[Event, ...]:
    """Every event of a recorded run, in the order the engine wrote them."""
    lines = (fixture / EVENTS.name).read_text(encoding="utf-8").splitlines()
    return tuple(event_from_dict(json.loads(line)) for line in lines if line.strip())


def live_until(step: int, fixture: Path = FIXTURE) -> list[Event]:
    """The events the dashboard had received when the run had just finished ``step``: every
    event up to that step's, and the periodic ones (hardware, log) written before the next step."""
    events = list(recorded_events(fixture))
    for index, event in enumerate(events):
        if isinstance(event, Step) and event.step == step:
            for end in range(index + 1, len(events)):
                if isinstance(events[end], (Step, CheckpointSaved)):
                    return events[:end]
            return events
    raise ValueError(f"the recorded run has no step {step}")


@dataclass(frozen=True)
class Exchange:
    prompt: str
    expected: str  # the built-in dataset's answer
    base: str
    tuned: str


@dataclass(frozen=True)
class RecordedChat:
    description: str  # what the chat pane's title showed for the run
    settings: dict[str, Any]
    exchanges: tuple[Exchange, ...]

    def reply_stream(
        self, messages: list[dict[str, str]], settings: object, variant: str
    ) -> Iterator[str]:
        """A ChatScreen reply stream that answers only recorded prompts, with the recorded reply."""
        prompt = messages[-1]["content"]
        for exchange in self.exchanges:
            if exchange.prompt == prompt:
                yield exchange.base if variant == "base" else exchange.tuned
                return
        raise KeyError(
            f"no recorded reply to {prompt!r}; record it with tests/tui/scenes/record.py"
        )


@cache
def recorded_chat() -> RecordedChat:
    data = json.loads(CHAT.read_text(encoding="utf-8"))
    exchanges = tuple(Exchange(**exchange) for exchange in data["exchanges"])
    return RecordedChat(data["description"], data["settings"], exchanges)

"""Shared helpers for the TUI tests: fixed clock zone, scripted scenes, polling."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from textual.pilot import Pilot

os.environ["TZ"] = "UTC"  # log timestamps in snapshots must not depend on the box
time.tzset()


async def _wait_for(pilot: Pilot, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def wait_for() -> Callable:
    """``await wait_for(pilot, condition)`` lets the app run until condition holds (no sleeps)."""
    return _wait_for


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Record app.exit() calls instead of leaving the test app."""

    def patch(app) -> list[tuple]:
        calls: list[tuple] = []
        monkeypatch.setattr(app, "exit", lambda *args, **kwargs: calls.append(args))
        return calls

    return patch

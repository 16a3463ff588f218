"""One duration for a run everywhere: `finetty runs`, the home screen and the log's finish line
(issue 17: `runs` measured from the first step's event, the log from the process's start)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.core.events import Finished
from engine.runs.rundir import human_line
from engine.runs.runstate import shown_duration_s
from tui.cli import main
from tui.screens.home import duration


def test_runs_home_and_log_give_a_finished_run_one_duration(tmp_path: Path, capsys) -> None:
    run = tmp_path / "demo" / "20261204-050131"
    run.mkdir(parents=True)
    status = {
        "state": "finished",
        "step": 60,
        "total_steps": 60,
        "started": 1000.0,
        "updated": 1096.3,
        "elapsed_s": 101.1,
    }
    (run / "status.json").write_text(json.dumps(status))
    (run / "events.jsonl").write_text(Finished("finished", 60, {}, {}, 101.1).to_json() + "\n")
    assert main(["runs", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert human_line(Finished("finished", 60, {}, {}, 101.1)).endswith(" 1m41s")
    assert " 1m41s " in out, out
    assert duration(status) == "1m41s"


def test_a_live_run_counts_to_now_and_a_run_without_a_start_has_no_duration() -> None:
    import os

    status = {"state": "running", "pid": os.getpid(), "started": 1000.0, "updated": 1010.0}
    assert shown_duration_s(status, 1100.0) == 100.0
    assert shown_duration_s({"state": "running", "started": "x"}, time.time()) is None

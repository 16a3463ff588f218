"""Records tests/data/demo_run, the run that the screenshots and run-screen snapshots replay.

    .venv/bin/python -m tests.tui.scenes.record            # trains the demo (minutes on a CPU)
    .venv/bin/python -m tests.tui.scenes.record --run DIR  # records a finished demo run instead
    python3 -m tests.tui.scenes.record --events-only --out tests/data/demo_run_gpu  # on a GPU box

1. Trains the demo preset headless in a temporary folder, with the command a user types:
   ``finetty train smollm2-demo --no-tui --run-dir runs`` (real training of the embedded
   SmolLM2-135M, on the CPU where CUDA_VISIBLE_DEVICES hides the GPUs). The script lowers its
   own priority (nice 10) first.
2. Copies the run's events.jsonl to tests/data/demo_run/ as the engine wrote it.
3. Loads the finished run as ``finetty chat RUN`` does and records what the chat pane answers
   with its default settings (greedy, 256 new tokens at most) to held-out prompts of the
   built-in dataset: from the tuned model, and from the base (the adapter switched off, as the
   pane's "base vs tuned" does). chat.json keeps each prompt with both replies.

The committed demo_run was recorded on this project's 2-core CPU box, idle, with ``--run`` on a
``finetty train smollm2-demo --no-tui`` run of commit 4879541 (60 steps in 83 s, exact match 0%
-> 71%). demo_run_gpu was recorded on one H200 with ``--events-only``: there the chat pane's
reply failed on CUDA on December 4 2026 (generate's stopping criteria made its tensor on the
CPU; fixed since).

Then run ``make screenshots`` and the snapshot tests (``--snapshot-update`` where the picture
changed, after looking at it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from tests.tui.scenes.recorded import CHAT, EVENTS, FIXTURE

REPO = Path(__file__).resolve().parents[3]
PRESET = "smollm2-demo"


def train(work: Path) -> Path:
    """Runs the demo preset headless under ``work``; returns the run directory (relative)."""
    env = {**os.environ, "TZ": "UTC", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("FINETTY_RUNS", None)
    # `finetty` is tui.cli's entry point; -m runs the same code where the package is not installed.
    command = [sys.executable, "-m", "tui.cli", "train", PRESET, "--no-tui", "--run-dir", "runs"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    print("recording: finetty", " ".join(command[3:]), flush=True)
    subprocess.run(command, cwd=work, env=env, check=True)
    (run_dir,) = (work / "runs" / PRESET).iterdir()
    return run_dir.relative_to(work)


def finished(run_dir: Path) -> None:
    status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    if status.get("state") != "finished" or not (run_dir / "final").is_dir():
        raise SystemExit(f"{run_dir} is not a finished run (state {status.get('state')!r}).")


def prompts() -> list[tuple[str, str]]:
    """(prompt, expected answer): the first held-out example of each built-in task."""
    from engine.data import builtin_data

    examples = builtin_data.generate("heldout")
    return [
        next((ex.prompt, ex.answer) for ex in examples if ex.task == task)
        for task in builtin_data.TASKS
    ]


def record_chat(run_dir: Path) -> dict:
    """The chat pane's replies, through the pane's own reply stream on the loaded run."""
    from engine.data import builtin_data
    from engine.models.inference import load_chat_model
    from tui.screens.chat import GenerationSettings, model_reply_stream

    chat = load_chat_model(str(run_dir))
    stream = model_reply_stream(chat.model, chat.tokenizer, chat.chat_template)
    settings = GenerationSettings()
    exchanges = []
    for prompt, expected in prompts():
        messages = [{"role": "user", "content": prompt}]
        replies = {v: "".join(stream(messages, settings, v)) for v in ("base", "tuned")}
        right = builtin_data.is_correct(expected, replies["tuned"])
        print(f"{prompt!r}\n  base:  {replies['base']!r}\n  tuned: {replies['tuned']!r} ({right})")
        exchanges.append({"prompt": prompt, "expected": expected, **replies})
    return {
        "recorded_by": "python -m tests.tui.scenes.record",
        "run": str(run_dir),
        "description": chat.description,
        "settings": {
            "system": settings.system,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_new_tokens": settings.max_new_tokens,
        },
        "versions": {name: metadata.version(name) for name in ("torch", "transformers", "peft")},
        "exchanges": exchanges,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished smollm2-demo run to record instead")
    parser.add_argument("--events-only", action="store_true", help="record no chat replies")
    parser.add_argument(
        "--out", type=Path, default=FIXTURE, help=f"where to write (default {FIXTURE})"
    )
    args = parser.parse_args()
    out = args.out.resolve()  # before the chdir below
    os.nice(10)  # real training on a shared box: give way to everything else
    os.environ.update(TZ="UTC", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if args.run is not None:
        run_dir = args.run.resolve()
        work = run_dir.parents[2]
        run_dir = run_dir.relative_to(work)
    else:
        work = Path(tempfile.mkdtemp(prefix="finetty-record-"))
        run_dir = train(work)
    os.chdir(work)  # the run's paths are relative to its folder, as the screens show them
    finished(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "events.jsonl", out / EVENTS.name)
    print(f"wrote {out / EVENTS.name} from {work / run_dir}", flush=True)
    if not args.events_only:
        chat = record_chat(run_dir)
        text = json.dumps(chat, indent=2, ensure_ascii=False) + "\n"
        (out / CHAT.name).write_text(text, encoding="utf-8")
        print(f"wrote {out / CHAT.name}")


if __name__ == "__main__":
    main()

"""`finetty chat`: the chat app on a real tiny model, and which front-end the CLI picks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Input

from engine.core.errors import ModelLoadError
from engine.models.inference import ChatTarget, resolve_chat_target
from tui import cli
from tui.chat_app import ChatApp
from tui.cli import terminal as cli_terminal
from tui.screens.chat import ChatScreen, GenerationSettings, ReplyStream, chat_loader
from tui.widgets.chat_log import ChatLog, ChatMessage

ROOT = Path(__file__).resolve().parents[2]


def transcript(app: ChatApp) -> list[ChatMessage]:
    return list(app.screen.query_one("#tuned", ChatLog).query(ChatMessage))


@pytest.mark.anyio
async def test_app_streams_a_real_reply_and_escape_quits(tiny_model_dir: Path, wait_for) -> None:
    load = chat_loader(resolve_chat_target(str(tiny_model_dir)))
    deltas: list[str] = []

    def recording_loader(progress) -> tuple[ReplyStream, bool]:
        stream, can_compare = load(progress)

        def recorded(*args) -> Iterator[str]:
            for delta in stream(*args):
                deltas.append(delta)
                yield delta

        return recorded, can_compare

    settings = GenerationSettings(system="Be brief.", temperature=0.0, max_new_tokens=6)
    app = ChatApp(recording_loader, description=str(tiny_model_dir), settings=settings)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(pilot, lambda: screen.reply_stream is not None and not screen.busy, 60)
        assert screen.query_one("#system", Input).value == "Be brief."
        assert screen.query_one("#max-tokens", Input).value == "6"
        await pilot.click("#prompt")
        for key in "hi there":
            await pilot.press(key if key != " " else "space")
        await pilot.press("enter")
        await wait_for(pilot, lambda: not screen.busy and len(screen.history["tuned"]) == 2, 60)
        reply = transcript(app)[-1]
        assert reply.role == "assistant"
        assert deltas, "the model produced no text"
        assert reply.text == "".join(deltas)
        assert screen.history["tuned"][0] == {"role": "user", "content": "hi there"}
        await pilot.press("escape")
        await pilot.pause()
    assert app.return_code == 0
    assert app.load_error is None


@pytest.mark.anyio
async def test_a_failed_load_ends_the_app_with_the_error_code(wait_for) -> None:
    def broken(progress) -> tuple[ReplyStream, bool]:
        raise ModelLoadError("weights are corrupt", hint="Download them again.")

    app = ChatApp(broken, description="broken")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.load_error is not None)
        await pilot.pause()
    assert app.return_code == 2
    assert app.load_error is not None and app.load_error.message == "weights are corrupt"


# -- the CLI: which front-end, and bad targets -----------------------------------------------
@pytest.fixture
def front_ends(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record which front-end cmd_chat starts instead of loading a model."""
    started: dict[str, list] = {"repl": [], "app": []}

    def fake_repl(args: argparse.Namespace, target: ChatTarget) -> int:
        started["repl"].append(target)
        return 0

    def fake_app(target: ChatTarget, settings: GenerationSettings) -> int:
        started["app"].append((target, settings))
        return 0

    monkeypatch.setattr("tui.repl.chat_repl", fake_repl)
    monkeypatch.setattr("tui.chat_app.run_chat_app", fake_app)
    return started


@pytest.mark.parametrize(
    ("terminal", "flags", "front_end"),
    [(True, [], "app"), (True, ["--no-tui"], "repl"), (False, [], "repl")],
    ids=["terminal", "no-tui", "pipe"],
)
def test_front_end_follows_terminal_and_no_tui(
    monkeypatch: pytest.MonkeyPatch,
    front_ends: dict[str, list],
    tiny_model_dir: Path,
    terminal: bool,
    flags: list[str],
    front_end: str,
) -> None:
    monkeypatch.setattr(cli_terminal, "interactive", lambda: terminal)
    argv = ["chat", str(tiny_model_dir), "--system", "Be brief.", "--temperature", "0.5"]
    assert cli.main([*argv, "--top-p", "0.9", "--max-new-tokens", "12", *flags]) == 0
    other = "repl" if front_end == "app" else "app"
    assert len(front_ends[front_end]) == 1 and not front_ends[other]
    if front_end == "app":
        target, settings = front_ends["app"][0]
        assert settings == GenerationSettings("Be brief.", 0.5, 0.9, 12)
    else:
        target = front_ends["repl"][0]
    assert target.source is not None and target.source.location == str(tiny_model_dir)


def _model_folder(root: Path) -> str:
    """Enough of a model folder to pass the checks that run before loading."""
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    return str(root / "model")


def _unfinished_run(root: Path) -> str:
    run = root / "demo" / "run-1"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    return str(run)


@pytest.mark.parametrize(
    ("make_target", "extra", "message"),
    [
        (lambda root: str(root / "no" / "such" / "model"), [], "Model folder not found"),
        (lambda root: str(root), [], "has no config.json"),
        (_unfinished_run, [], "has no final/ model yet"),
        (lambda root: "latest", [], "No runs found"),
        (_model_folder, ["--adapter", "."], "is not a PEFT adapter folder"),
    ],
    ids=["missing", "not-a-model", "unfinished-run", "no-runs", "bad-adapter"],
)
@pytest.mark.parametrize("terminal", [True, False], ids=["tui", "repl"])
def test_bad_target_is_exit_2_with_a_clear_message_in_both_modes(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    front_ends: dict[str, list],
    tmp_path: Path,
    make_target,
    extra: list[str],
    message: str,
    terminal: bool,
) -> None:
    monkeypatch.setattr(cli_terminal, "interactive", lambda: terminal)
    monkeypatch.setenv("COLUMNS", "400")  # the error panel must not wrap the long tmp paths
    argv = ["chat", make_target(tmp_path), "--run-dir", str(tmp_path / "runs"), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert front_ends == {"repl": [], "app": []}  # refused before any front-end started


def test_repl_through_a_pipe_streams_a_real_reply(tiny_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "chat", str(tiny_model_dir), "--max-new-tokens", "4"],
        input="hi\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "chatting with" in result.stderr and "Traceback" not in result.stderr

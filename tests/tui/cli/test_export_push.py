"""`finetty export ... --push`: the URL is printed only once the commit landed; refusals exit 2
before the export starts; a failed push exits 1. Against tests/hub_server.py, never the hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.export.test_export import make_run
from tests.hub_server import HubServer, HubState, loopback_hub
from tests.tui.cli.test_export_cli import run_export


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubState]:
    with loopback_hub(monkeypatch, tmp_path) as state:
        yield state


def test_push_prints_the_repo_url_last(
    run_dir: Path, hub: HubState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(run_dir), "--format", "adapter", "--out", str(tmp_path), "--push", "alice/cli"]
    assert run_export(argv) == 0
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1]
    assert last.startswith("pushed") and last.endswith(f"{hub.url}/alice/cli")
    assert "hub: alice/cli (new repo) as alice: checked" in err and "hub: done" in err
    stored = hub.files("alice/cli")
    for file in (tmp_path / "adapter").iterdir():
        if file.name != "README.md":
            assert stored[file.name] == file.read_bytes()
    assert stored["README.md"].startswith(b"---\n")
    # The token is sent as a header only: never printed, never in a pushed file.
    assert "tok-alice" not in out + err
    assert not [path for path, data in stored.items() if b"tok-alice" in data]


def test_json_has_the_push(
    run_dir: Path, hub: HubState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(run_dir), "--format", "adapter", "--out", str(tmp_path), "--json"]
    assert run_export([*argv, "--push", "alice/j", "--revision", "dev", "--private"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["push"]["url"].endswith("/alice/j/tree/dev")
    assert {f["path"] for f in result["push"]["files"]} == set(hub.files("alice/j", "dev")) - {
        ".gitattributes"
    }
    assert hub.repos["alice/j"].private


@pytest.mark.parametrize(
    ("token", "message"),
    [(None, "Not logged in"), ("hf_secret_wrong", "refused the Hugging Face token (401)")],
)
def test_no_or_bad_token_is_exit_2_before_the_export(
    run_dir: Path,
    hub: HubState,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str | None,
    message: str,
) -> None:
    if token is None:
        monkeypatch.delenv("HF_TOKEN")
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    argv = [str(run_dir), "--format", "adapter", "--out", str(tmp_path / "o"), "--push", "m"]
    assert run_export(argv) == 2
    out, err = capsys.readouterr()
    assert message in err and out == ""
    assert "hf_secret_wrong" not in err  # a token is never printed, even a refused one
    assert not (tmp_path / "o").exists() and hub.uploads() == []


def test_failed_commit_is_exit_1_and_never_reported_pushed(
    run_dir: Path, hub: HubState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.fail_commits = 1
    argv = [str(run_dir), "--format", "adapter", "--out", str(tmp_path), "--push", "alice/f"]
    assert run_export(argv) == 1
    out, err = capsys.readouterr()
    assert "pushed" not in out and "Nothing was committed" in err
    assert f"kept in {tmp_path}" in err and "again with --force" in err  # a plain rerun refuses
    assert set(hub.files("alice/f")) == {".gitattributes"}


def test_push_options_need_push(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_export([str(run_dir), "--format", "adapter", "--private"]) == 2
    assert "only go with --push" in capsys.readouterr().err


def test_cli_reads_the_token_file_under_hf_home(run_dir: Path, tmp_path: Path) -> None:
    """The real command in its own process: HF_ENDPOINT and HF_HOME as a user sets them."""
    state = HubState()
    state.add_user("carol", "tok-carol")
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text("tok-carol")
    with HubServer(state) as server:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("HF_", "HUGGING_FACE_"))
        }
        # Xet off: this server speaks LFS, not Xet's content-addressed store.
        env.update(HF_ENDPOINT=server.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1")
        argv = [str(run_dir), "--format", "adapter", "--out", str(tmp_path / "o"), "--push", "p"]
        done = subprocess.run(
            [sys.executable, "-m", "tui.cli", "export", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(f"{server.url}/carol/p")
    assert "adapter_config.json" in state.files("carol/p")

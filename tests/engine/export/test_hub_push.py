"""Push to a loopback hub (tests/hub_server.py): real uploads compared byte by byte, the model
card's metadata, and every refusal made before anything is sent. Never the real hub."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from engine.export import ExportReport, export_run
from engine.export.hub import (
    HubError,
    HubPushFailed,
    check_push,
    push_export,
    repo_layout,
)
from engine.export.model_card import CardFiles, model_card, read_figures
from tests.engine.export.test_export import make_run
from tests.hub_server import HubServer, HubState, Repo, loopback_hub, point_huggingface_hub_at


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> ExportReport:
    """A LoRA run exported as adapter, merged model, two GGUFs and their Modelfiles."""
    run = make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)
    out = tmp_path_factory.mktemp("exports")
    return export_run(
        run, ["adapter", "merged", "gguf"], quants=["f16", "q8_0"], out=out, ollama_files=True
    )


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubState]:
    with loopback_hub(monkeypatch, tmp_path) as state:
        yield state


def test_push_uploads_every_file_byte_for_byte(exported: ExportReport, hub: HubState) -> None:
    progress: list[tuple[str, float | None]] = []
    target = check_push("tiny-model")  # no namespace: the user's own
    assert target.repo_id == "alice/tiny-model" and not target.repo_exists
    report = push_export(target, exported, progress=lambda m, f=None: progress.append((m, f)))

    stored = hub.files("alice/tiny-model")
    layout = repo_layout(exported.items)
    assert {path for _, path in layout} | {"README.md", ".gitattributes"} == set(stored)
    for local, path in layout:
        assert stored[path] == local.read_bytes(), path
    # The merged model at the root, the adapter beside it, every quant in the same repo.
    assert "model.safetensors" in stored and "adapter/adapter_config.json" in stored
    assert "adapter/README.md" not in stored  # the export's README names local paths
    assert {"tiny-f16.gguf", "tiny-q8_0.gguf", "tiny-q8_0.Modelfile"} <= set(stored)
    assert report.url.endswith("/alice/tiny-model") and "/commit/" in report.commit_url
    assert len(hub.repos["alice/tiny-model"].commits) == 1  # one commit with everything
    # Large files went through LFS; the biggest in parts (multipart), each part checked.
    assert any("/lfs-part/" in path for _, path in hub.requests)
    assert any(m.startswith("hub: uploading") and f and 0 < f < 1 for m, f in progress)

    card = stored["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers"
    assert {"finetty", "sft", "lora", "gguf"} <= set(meta["tags"])
    assert "base_model" not in meta and "datasets" not in meta  # local paths are not hub ids
    assert "llama-cli -hf alice/tiny-model:F16" in card
    assert "ollama run hf.co/alice/tiny-model:F16" in card
    assert 'AutoModelForCausalLM.from_pretrained("alice/tiny-model")' in card
    assert 'PeftModel.from_pretrained(base, "alice/tiny-model", subfolder="adapter")' in card
    assert "<|im_start|>" in card  # the chat template
    assert "| learning rate | 0.0002 |" in card
    # A local base or dataset is named by its last part: the card shows no path of this machine.
    assert str(exported.run_dir.parent.parent.parent) not in card and "/tmp" not in card
    assert "`alpaca_small.jsonl` (local)" in card


def test_card_metadata_and_figures(exported: ExportReport, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from engine.config.presets import run_config

    preset = run_config(exported.run_dir)
    preset = preset.model_copy(
        update={
            "model": preset.model.model_copy(
                update={"name_or_path": "embedded:smollm2-135m-instruct"}
            ),
            "dataset": preset.dataset.model_copy(update={"path": "yahma/alpaca-cleaned"}),
        }
    )
    events = [
        {"type": "run_started", "v": 1},
        {"type": "eval", "step": 10, "loss": 1.5, "perplexity": 4.4817},
        {"type": "exact_match", "stage": "before", "accuracy": 0.25, "correct": 1, "total": 4},
        {"type": "exact_match", "stage": "after", "accuracy": 0.75, "correct": 3, "total": 4},
        {
            "type": "finished",
            "status": "finished",
            "step": 20,
            "metrics": {"final_loss": 1.23456, "best_loss": 1.1, "eval_loss": 1.5},
        },
    ]
    lines = "\n".join(json.dumps(e) for e in events) + '\n{"type": "trunc'  # cut-off last line
    (tmp_path / "events.jsonl").write_text(lines, encoding="utf-8")
    figures = read_figures(tmp_path / "events.jsonl")
    assert (figures.final_loss, figures.best_loss, figures.step) == (1.23456, 1.1, 20)

    files = CardFiles(adapter="", ggufs=("tiny-q4_k_m.gguf",))
    card = model_card(preset, tmp_path, exported.run_dir / "final", "me/m", files, "9.9.9")
    data = ModelCard(card).data.to_dict()  # the hub's own parser of the front matter
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["datasets"] == ["yahma/alpaca-cleaned"]
    assert data["library_name"] == "peft" and "finetty" in data["tags"]
    for expected in (
        "| final loss | 1.2346 |",
        "| best loss | 1.1000 |",
        "| eval loss | 1.5000 |",
        "| eval perplexity | 4.4817 |",
        "| exact match before training | 25.0% (1/4) |",
        "| exact match after training | 75.0% (3/4) |",
        "finetty 9.9.9",
        "llama-cli -hf me/m:Q4_K_M",
        'PeftModel.from_pretrained(base, "me/m")',
        'AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")',
    ):
        assert expected in card, expected


def test_token_from_the_hf_home_token_file(
    exported: ExportReport, hub: HubState, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True)
    Path(constants.HF_TOKEN_PATH).write_text("tok-bob\n")
    assert check_push("m").repo_id == "bob/m"


@pytest.mark.parametrize(
    ("setup", "repo_id", "message"),
    [
        ("no token", "alice/m", "Not logged in"),
        ("bad token", "alice/m", "refused the Hugging Face token (401)"),
        ("read token", "alice/m", "read-only"),
        ("other user", "bob/m", "cannot write to the namespace 'bob'"),
        ("read-only org", "readers/m", "(read-only member)"),
        ("taken", "alice/taken", "already exists and holds files: weights.bin"),
        ("offline", "alice/m", "HF_HUB_OFFLINE is set"),
        ("public, --private", "alice/taken", "exists and is public"),
        ("bad name", "alice/m/x", "is not a hub repo name"),
    ],
)
def test_refusals_come_before_any_upload(
    hub: HubState, monkeypatch: pytest.MonkeyPatch, setup: str, repo_id: str, message: str
) -> None:
    from huggingface_hub import constants

    hub.repos["alice/taken"] = Repo(private=False)
    hub.repos["alice/taken"].branches["main"]["weights.bin"] = b"someone's model"
    if setup == "no token":
        monkeypatch.delenv("HF_TOKEN")
    elif setup == "bad token":
        monkeypatch.setenv("HF_TOKEN", "tok-wrong")
    elif setup == "read token":
        hub.users["alice"].role = "read"
    elif setup == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=re.escape(message)) as caught:
        check_push(repo_id, private=setup == "public, --private", force=setup != "taken")
    assert caught.value.exit_code == 2 and caught.value.hint
    assert hub.uploads() == [] and set(hub.repos) == {"alice/taken"}


def test_server_down_is_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with HubServer() as server:
        url = server.url
    point_huggingface_hub_at(monkeypatch, url, str(tmp_path / "token"))
    monkeypatch.setenv("HF_TOKEN", "tok-alice")
    with pytest.raises(HubError, match=f"Cannot reach the Hugging Face Hub at {url}") as caught:
        check_push("alice/m")
    assert "network" in (caught.value.hint or "")


def test_silent_network_times_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A server that takes the connection and never answers (a black-holed network)."""
    import socket

    from engine.export import hub

    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        point_huggingface_hub_at(monkeypatch, url, str(tmp_path / "token"))
        monkeypatch.setenv("HF_TOKEN", "tok-alice")
        monkeypatch.setattr(hub, "WHOAMI_TIMEOUT_S", 0.5)
        with pytest.raises(HubError, match=f"No answer from the Hugging Face Hub at {url}"):
            check_push("alice/m")


def test_force_pushes_on_top_of_a_taken_repo(exported: ExportReport, hub: HubState) -> None:
    hub.repos["alice/taken"] = Repo(private=False)
    hub.repos["alice/taken"].branches["main"]["weights.bin"] = b"older"
    push_export(check_push("alice/taken", force=True), exported)
    stored = hub.files("alice/taken")
    assert stored["weights.bin"] == b"older"  # other files kept; same names replaced
    assert (
        stored["model.safetensors"] == (exported.out_dir / "merged/model.safetensors").read_bytes()
    )


def test_failed_commit_shows_nothing_and_a_rerun_sends_only_what_is_missing(
    exported: ExportReport, hub: HubState
) -> None:
    hub.fail_commits = 1
    with pytest.raises(HubPushFailed, match="Nothing was committed") as caught:
        push_export(check_push("alice/m"), exported)
    assert caught.value.exit_code == 1 and "again with --force" in (caught.value.hint or "")
    assert set(hub.files("alice/m")) == {".gitattributes"}  # nothing half-pushed
    assert hub.lfs  # but the large files are stored, ready for the next try
    before = len(hub.requests)
    push_export(check_push("alice/m"), exported)  # the empty repo is not "taken"
    rerun = hub.requests[before:]
    assert not [path for method, path in rerun if method == "PUT"]  # no byte sent twice
    assert "model.safetensors" in hub.files("alice/m")


def test_private_repo_on_a_branch(exported: ExportReport, hub: HubState) -> None:
    adapter_only = ExportReport(
        exported.run_dir, exported.out_dir, [i for i in exported.items if i.kind == "adapter"]
    )
    target = check_push("team/m", revision="dev", private=True)
    report = push_export(target, adapter_only)
    assert report.url.endswith("/team/m/tree/dev") and hub.repos["team/m"].private
    stored = hub.files("team/m", "dev")
    assert "adapter_config.json" in stored  # the adapter at the root: PEFT's layout
    assert set(hub.files("team/m", "main")) == {".gitattributes"}
    adapter = exported.out_dir / "adapter"
    for file in adapter.iterdir():
        if file.name != "README.md":
            assert stored[file.name] == file.read_bytes()
    assert yaml.safe_load(stored["README.md"].decode().split("---\n")[1])["library_name"] == "peft"


def test_adapter_config_names_the_hub_base_not_a_local_folder(
    exported: ExportReport, hub: HubState, tmp_path: Path
) -> None:
    """The exported adapter_config.json names the folder the base was loaded from; the pushed
    one names the base's hub id (AutoPeftModel loads it anywhere), the rest byte for byte."""
    run = tmp_path / "run"
    shutil.copytree(exported.run_dir, run, ignore=shutil.ignore_patterns("exports"))
    config = (run / "config.yaml").read_text(encoding="utf-8")
    local_base = yaml.safe_load(config)["model"]["name_or_path"]
    (run / "config.yaml").write_text(
        config.replace(local_base, "HuggingFaceTB/SmolLM2-135M-Instruct"), encoding="utf-8"
    )
    adapter = [item for item in exported.items if item.kind == "adapter"]
    push_export(check_push("alice/a"), ExportReport(run, exported.out_dir, adapter))

    stored = hub.files("alice/a")
    exported_config = json.loads((adapter[0].path / "adapter_config.json").read_text())
    assert exported_config["base_model_name_or_path"] == local_base
    pushed_config = json.loads(stored["adapter_config.json"])
    assert pushed_config == {
        **exported_config,
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    for file in adapter[0].path.iterdir():
        if file.name not in ("README.md", "adapter_config.json"):
            assert stored[file.name] == file.read_bytes()


def test_the_loopback_hub_refuses_what_the_real_one_would(hub: HubState) -> None:
    """The double checks what it is given: bytes against their sha256, commits against stored
    LFS objects, tokens and namespaces; a push that passes here did send the right bytes."""
    import hashlib
    import urllib.error
    import urllib.request

    def call(method: str, path: str, body: bytes, token: str | None = "tok-alice") -> int:
        request = urllib.request.Request(f"{hub.url}{path}", data=body, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    oid = hashlib.sha256(b"right").hexdigest()
    assert call("PUT", f"/lfs-upload/{oid}/5", b"wrong") == 400 and oid not in hub.lfs
    assert call("PUT", f"/lfs-upload/{oid}/5", b"right") == 200 and hub.lfs[oid] == b"right"
    assert call("POST", "/api/repos/create", b'{"name": "r"}', token=None) == 401
    assert call("POST", "/api/repos/create", b'{"name": "r", "organization": "bob"}') == 403
    assert call("POST", "/api/repos/create", b'{"name": "r"}') == 200
    assert call("POST", "/api/repos/create", b'{"name": "r"}') == 409
    header = json.dumps({"key": "header", "value": {"summary": "s"}})
    missing = json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "oid": "0" * 64, "size": 1}})
    body = f"{header}\n{missing}\n".encode()
    assert call("POST", "/api/models/alice/r/commit/main", body) == 422
    assert set(hub.files("alice/r")) == {".gitattributes"}

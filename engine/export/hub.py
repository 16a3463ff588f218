"""Push an export to the Hugging Face Hub: one commit with every file and a model card.

``check_push`` does everything that can refuse a push before anything is exported or sent: the
token (read by huggingface_hub from its standard places only: ``HF_TOKEN``, then the token file
under ``HF_HOME`` that ``hf auth login`` writes; finetty never takes one on its command line and
never logs, emits or saves it), the hub reachable, the token allowed to write to the namespace,
and the repo (or branch) not already holding files unless ``force``. ``push`` then creates the
repo if needed and uploads.

Resumable: every large file is sent by ``HfApi.preupload_lfs_files`` before the one commit. That
goes through the hub's LFS protocol (multipart, one PUT per part, for large files) or, with
hf_xet installed, Xet's chunked upload; either way a stored object is skipped next time (LFS: the
batch answers a known sha256 with no upload action; Xet: known chunks are not sent again), so a
push cut off midway resumes by running it again and sends only what is missing. The repo shows
nothing of it until the single ``create_commit`` lands, so a failed push is never half visible.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, FinettyError
from engine.export.files import Progress, human_size, no_progress
from engine.export.model_card import CardFiles, hub_id, model_card

_REPO_NAME = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
WHOAMI_TIMEOUT_S = 30.0  # the checks' limit: huggingface_hub's client waits forever by default
_NOT_FILES = {".gitattributes"}  # what every new hub repo holds: an empty repo is not "taken"


class HubError(FinettyError):
    """A push refused before any upload: not logged in, no network, no rights, name taken."""

    exit_code = EXIT_BAD_INPUT
    kind = "hub"
    default_title = "Cannot push to the hub"


class HubPushFailed(FinettyError):
    """The upload or the commit failed; nothing was committed to the repo."""

    exit_code = EXIT_FAILED
    kind = "hub"
    default_title = "Push failed"


@dataclass(frozen=True)
class HubTarget:
    """Where a push goes, as checked by ``check_push`` (no token in it: it is read again)."""

    repo_id: str
    revision: str
    private: bool
    endpoint: str
    user: str
    repo_exists: bool
    branch_exists: bool

    @property
    def url(self) -> str:
        base = f"{self.endpoint}/{self.repo_id}"
        return base if self.revision == "main" else f"{base}/tree/{self.revision}"


@dataclass
class PushReport:
    url: str
    commit_url: str
    files: list[tuple[str, int]] = field(default_factory=list)  # path in repo, size


def endpoint() -> str:
    """The hub's address: HF_ENDPOINT when set (read now, not at import), else huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_push(
    repo_id: str, *, revision: str | None = None, private: bool = False, force: bool = False
) -> HubTarget:
    """Everything that can refuse the push, checked before any export or upload starts."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if not _REPO_NAME.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise HubError(
            f"'{repo_id}' is not a hub repo name.",
            hint="Use NAMESPACE/NAME or NAME (letters, digits, '-', '_', '.'), e.g. me/my-model.",
        )
    if constants.is_offline_mode():
        raise HubError(
            "HF_HUB_OFFLINE is set, so huggingface_hub sends nothing; a push needs the network.",
            hint="Unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) for this command.",
        )
    try:
        token = get_token()
    except Exception as error:  # noqa: BLE001 - e.g. HF_OIDC_RESOURCE set and its exchange failed
        raise HubError(
            f"Reading the Hugging Face token failed: {error}",
            hint="Fix the login (`hf auth login`, HF_TOKEN, or the OIDC settings), then retry.",
        ) from None
    if not token:
        raise HubError(
            "Not logged in to the Hugging Face Hub: no token in HF_TOKEN or in the token file "
            f"({constants.HF_TOKEN_PATH}).",
            hint="Run `hf auth login` with a write token, or set HF_TOKEN "
            "(https://huggingface.co/settings/tokens).",
        )
    where = endpoint()
    api = HfApi(endpoint=where, token=token)
    me = _within(WHOAMI_TIMEOUT_S, lambda: _hub_call(api.whoami, where, "checking the token"))
    user = str(me.get("name"))
    if "/" not in repo_id:
        repo_id = f"{user}/{repo_id}"
    _check_can_write(me, repo_id)
    branch = revision or "main"
    repo_exists = branch_exists = True
    taken: list[str] = []
    try:
        info = _hub_call(
            lambda: api.repo_info(repo_id, revision=branch, timeout=WHOAMI_TIMEOUT_S),
            where,
            f"reading {repo_id}",
        )
        taken = sorted(s.rfilename for s in info.siblings or [] if s.rfilename not in _NOT_FILES)
        if private and info.private is False:
            # The hub ignores `private` for an existing repo: the files would go out public.
            raise HubError(
                f"{repo_id} exists and is public; --private cannot make an existing repo private.",
                hint="Make it private in the repo's settings on the hub first, or push to a new "
                "repo name.",
            )
    except RepositoryNotFoundError:
        repo_exists = branch_exists = False
    except RevisionNotFoundError:
        branch_exists = False
    if taken and not force:
        shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        raise HubError(
            f"{repo_id}{'' if branch == 'main' else f' (branch {branch})'} already exists and "
            f"holds files: {shown}.",
            hint="Pass --force to commit this export on top of it (files of the same name are "
            "replaced, others kept), or choose another repo name or --revision.",
        )
    return HubTarget(repo_id, branch, private, where, user, repo_exists, branch_exists)


def repo_layout(items: Sequence[Any]) -> list[tuple[Path, str]]:
    """(local file, path in repo) for every exported file: the merged model at the root (so
    transformers loads the repo id), else the adapter there (PEFT's layout); an adapter beside a
    merged model goes to adapter/; GGUFs and Modelfiles at the root, one repo for all quants."""
    kinds = {item.kind for item in items}
    layout: list[tuple[Path, str]] = []
    for item in items:
        if item.kind in ("adapter", "merged"):
            prefix = "adapter/" if item.kind == "adapter" and "merged" in kinds else ""
            for file in sorted(p for p in Path(item.path).rglob("*") if p.is_file()):
                relative = file.relative_to(item.path).as_posix()
                # The model card is the one README: the export's own names this machine's paths.
                if relative != "README.md":
                    layout.append((file, prefix + relative))
        else:
            layout.append((Path(item.path), Path(item.path).name))
    return layout


def push(
    target: HubTarget,
    items: Sequence[Any],
    card: str,
    *,
    replaced: dict[str, bytes] | None = None,
    progress: Progress = no_progress,
) -> PushReport:
    """Create the repo (and branch) if needed, upload every file, then commit them all at once.
    ``replaced`` gives other contents for some paths in the repo (see ``push_export``)."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    api = HfApi(endpoint=target.endpoint, token=get_token())
    replaced = replaced or {}
    layout = repo_layout(items)
    where, repo = target.endpoint, target.repo_id
    sizes = {
        path: len(replaced[path]) if path in replaced else local.stat().st_size
        for local, path in layout
    }
    operations = [
        CommitOperationAdd(path, replaced.get(path) or str(local)) for local, path in layout
    ]
    operations.append(CommitOperationAdd("README.md", card.encode("utf-8")))
    total = sum(sizes.values()) or 1
    sent = 0
    try:
        if not target.repo_exists:
            kind = "private" if target.private else "public"
            progress(f"hub: creating {kind} repo {repo}", None)
            _hub_call(
                lambda: api.create_repo(repo, private=target.private, exist_ok=True),
                where,
                f"creating {repo}",
            )
        if not target.branch_exists and target.revision != "main":
            _hub_call(
                lambda: api.create_branch(repo, branch=target.revision, exist_ok=True),
                where,
                f"creating branch {target.revision}",
            )
        # The card (last) needs no upload of its own: it goes with the commit.
        for index, operation in enumerate(operations[:-1], 1):
            path = operation.path_in_repo
            progress(
                f"hub: uploading {index}/{len(layout)} {path} "
                f"({human_size(sent)} of {human_size(total)})",
                sent / total if 0 < sent < total else None,
            )
            _hub_call(
                lambda op=operation: api.preupload_lfs_files(
                    repo, additions=[op], revision=target.revision
                ),
                where,
                f"uploading {path}",
            )
            sent += sizes[path]
        progress(f"hub: committing {len(operations)} files to {repo}@{target.revision}", None)
        commit = _hub_call(
            lambda: api.create_commit(
                repo,
                operations,
                commit_message="Upload model exported by finetty",
                revision=target.revision,
            ),
            where,
            "committing",
        )
    except Exception as error:  # noqa: BLE001 - whatever stopped it, the message says so
        said = error.message if isinstance(error, HubError) else f"{type(error).__name__}: {error}"
        raise HubPushFailed(
            f"The push to {repo} failed: {said} Nothing was committed: the repo shows none of "
            "this export.",
            hint="Run the same command again: files the hub already stored are not sent again.",
        ) from None
    files = [(path, sizes[path]) for _, path in layout]
    files.append(("README.md", len(card.encode("utf-8"))))
    progress("hub: done", 1.0)
    return PushReport(target.url, str(commit.commit_url), files)


def push_export(target: HubTarget, report: Any, *, progress: Progress = no_progress) -> PushReport:
    """Push what ``export_run`` wrote (its ExportReport), with a model card from the run."""
    from engine import __version__
    from engine.export.adapter import read_run

    info = read_run(str(report.run_dir))
    layout = [path for _, path in repo_layout(report.items)]
    kinds = {item.kind for item in report.items}
    files = CardFiles(
        adapter=("adapter" if "merged" in kinds else "") if "adapter" in kinds else None,
        merged="merged" in kinds,
        ggufs=tuple(p for p in layout if p.endswith(".gguf")),
        modelfiles=tuple(p for p in layout if p.endswith(".Modelfile")),
    )
    card = model_card(info.preset, info.run_dir, info.final, target.repo_id, files, __version__)
    replaced = _hub_base_in_adapter_config(repo_layout(report.items), info.preset)
    try:
        return push(target, report.items, card, replaced=replaced, progress=progress)
    except HubPushFailed as error:  # the export's targets now exist: a plain rerun refuses
        raise HubPushFailed(
            f"{error.message} The export itself is kept in {report.out_dir}.",
            hint="Run it again with --force (the export is redone; files the hub already "
            "stored are not sent again).",
        ) from None


def _hub_base_in_adapter_config(layout: list[tuple[Path, str]], preset: Any) -> dict[str, bytes]:
    """adapter_config.json with the base's hub id, where the base came from the hub or is the
    embedded copy of a hub model: the local copy names the folder it was loaded from (a cache
    path on this machine), which would leak into the repo and break AutoPeftModel there."""
    base = hub_id(preset.model.name_or_path)
    replaced: dict[str, bytes] = {}
    for local, path in layout:
        if base and Path(path).name == "adapter_config.json":
            config = json.loads(local.read_text(encoding="utf-8"))
            if config.get("base_model_name_or_path") != base:
                config["base_model_name_or_path"] = base
                replaced[path] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    return replaced


def _check_can_write(me: dict[str, Any], repo_id: str) -> None:
    namespace = repo_id.split("/")[0]
    token = (me.get("auth") or {}).get("accessToken") or {}
    if token.get("role") == "read":
        raise HubError(
            f"The Hugging Face token ({token.get('displayName', 'unnamed')}) is read-only; "
            "pushing needs write access.",
            hint="Create a write token at https://huggingface.co/settings/tokens, then "
            "`hf auth login` with it or set HF_TOKEN.",
        )
    orgs = {str(o.get("name")): o.get("roleInOrg") for o in me.get("orgs") or []}
    if namespace != me.get("name") and (namespace not in orgs or orgs[namespace] == "read"):
        member = namespace in orgs
        raise HubError(
            f"{me.get('name')} cannot write to the namespace '{namespace}'"
            f"{' (read-only member)' if member else ''}.",
            hint=f"Push to your own namespace ({me.get('name')}/NAME) or an organisation you can "
            f"write to: {', '.join(n for n, r in orgs.items() if r != 'read') or 'none'}.",
        )


def _hub_call(call: Callable[[], Any], where: str, what: str) -> Any:
    """``call()``, with a failure turned into a HubError that says what happened and what next."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return call()
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise  # the caller decides what a missing repo or branch means
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubError(
                f"The hub at {where} refused the Hugging Face token (401) while {what}.",
                hint="Log in again with `hf auth login --force`, or set HF_TOKEN to a valid "
                "write token.",
            ) from None
        if status == 403:
            raise HubError(
                f"The token may not do this ({what}): 403 from {where}.",
                hint="Use a write token of an account that can write to this namespace.",
            ) from None
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubError(f"The hub answered {status} while {what}: {first}") from None
    except _network_errors() as error:
        raise HubError(
            f"Cannot reach the Hugging Face Hub at {where} while {what}: {error or type(error).__name__}.",
            hint="Check the network connection (and HF_ENDPOINT if set).",
        ) from None


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection refused, DNS, TLS, timeouts: the HTTP client's transport errors, and OSError."""
    try:
        import httpx2 as client  # huggingface_hub >= 2
    except ImportError:
        import httpx as client  # huggingface_hub 1.x
    return (client.TransportError, OSError)


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` on a daemon thread, given up after ``seconds`` (a silent network)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = error

    thread = threading.Thread(target=run, name="finetty-hub-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise HubError(
            f"No answer from the Hugging Face Hub at {endpoint()} in {seconds:.0f} s.",
            hint="Check the network connection (and HF_ENDPOINT if set).",
        )
    if "error" in result:
        raise result["error"]
    return result["value"]

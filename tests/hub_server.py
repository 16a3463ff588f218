"""A loopback Hugging Face Hub: the endpoints huggingface_hub calls to push a model, for tests.

It listens on 127.0.0.1 only (port 0: the kernel picks a free one) and keeps everything in
memory. The semantics are the hub's where a push depends on them: a bearer token names a user
(401 without one or with an unknown one), a user writes to their own namespace and to
organisations they belong to (403 elsewhere), creating an existing repo is a 409, preupload says
which files go through LFS, LFS objects are stored only when their bytes hash to the announced
sha256 and size (basic PUT, or multipart PUTs of ``chunk_size`` parts plus a completion call), and
a commit (NDJSON: a header line, then files) refers to LFS objects that must already be stored.
``files(repo_id, revision)`` gives back the bytes of every committed file for tests to compare.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".model")
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_REV = r"(?P<rev>[^/?]+)"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a regular file, which the hub returns as a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(
        default_factory=lambda: {"main": {".gitattributes": b"*.safetensors filter=lfs\n"}}
    )
    commits: list[str] = field(default_factory=list)


@dataclass
class User:
    token: str
    orgs: dict[str, str] = field(default_factory=dict)  # organisation -> role (read, write, admin)
    role: str = "write"  # the token's own role: read or write


class HubState:
    """What the server knows; one lock guards it (the server answers on several threads)."""

    def __init__(self, multipart_threshold: int = 256 * 1024, chunk_size: int = 96 * 1024) -> None:
        self.lock = threading.Lock()
        self.users: dict[str, User] = {}
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> bytes
        self.parts: dict[tuple[str, int], bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.multipart_threshold = multipart_threshold
        self.chunk_size = chunk_size
        self.fail_commits = 0  # answer this many commits with a 500 (a push cut off at the end)
        self.url = ""  # set by HubServer

    def add_user(self, name: str, token: str, **kwargs: Any) -> None:
        self.users[name] = User(token, **kwargs)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The committed files of ``revision`` with their contents (LFS pointers resolved)."""
        with self.lock:
            return dict(self.repos[repo_id].branches[revision])

    def uploads(self) -> list[tuple[str, str]]:
        """Requests that send content or change a repo: all an aborted push may not have made."""
        return [
            (method, path)
            for method, path in self.requests
            if method == "PUT"
            or re.search(r"/(commit|preupload|branch)/|/repos/create|objects/batch|/lfs-", path)
        ]


class HubServer:
    """``with HubServer() as hub:`` serves on ``hub.url`` until the block ends."""

    def __init__(self, state: HubState | None = None) -> None:
        self.state = state or HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = self.state.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        handler.base_url = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    base_url: str

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read ``state.requests`` instead."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing ---------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        body = self._body()
        with self.state.lock:
            self.state.requests.append((method, path))
        for verb, pattern, name in _ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                try:
                    with self.state.lock:
                        status, answer, headers = getattr(self, name)(body, **match.groupdict())
                except _HttpError as error:
                    extra = {"X-Error-Code": error.code} if error.code else {}
                    self._send(error.status, {"error": error.message}, extra)
                    return
                self._send(status, answer, headers)
                return
        self._send(404, {"error": f"no route {method} {path}"}, {})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, answer: Any, headers: dict[str, str]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> tuple[str, User]:
        header = self.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip()
        for name, user in self.state.users.items():
            if token and user.token == token:
                return name, user
        raise _HttpError(401, "Invalid credentials in Authorization header")

    def _writer(self, repo_id: str) -> str:
        name, user = self._user()
        namespace = repo_id.split("/")[0]
        can = namespace == name or user.orgs.get(namespace) in ("write", "admin")
        if not can or user.role != "write":
            raise _HttpError(403, f"You don't have the rights to write to {namespace}")
        return name

    def _repo(self, repo_id: str) -> Repo:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _branch(self, repo: Repo, rev: str) -> dict[str, bytes]:
        if rev not in repo.branches:
            raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.branches[rev]

    # -- endpoints --------------------------------------------------------------------------------
    def whoami(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        name, user = self._user()
        orgs = [{"name": org, "roleInOrg": role} for org, role in user.orgs.items()]
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": user.role}}
        return 200, {"type": "user", "name": name, "orgs": orgs, "auth": auth}, {}

    def create_repo(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        payload = json.loads(body)
        name, _ = self._user()
        repo_id = f"{payload.get('organization') or name}/{payload['name']}"
        self._writer(repo_id)
        url = f"{self.base_url}/{repo_id}"
        if repo_id in self.state.repos:
            return 409, {"error": "You already created this model repo", "url": url}, {}
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        self.state.repos[repo_id] = Repo(private)
        return 200, {"url": url, "name": repo_id}, {}

    def repo_info(
        self, body: bytes, repo: str, rev: str = "main"
    ) -> tuple[int, Any, dict[str, str]]:
        found = self._repo(repo)
        if found.private:
            name, user = self._user()
            namespace = repo.split("/")[0]
            if namespace != name and namespace not in user.orgs:
                raise _HttpError(404, "Repository not found", "RepoNotFound")
        files = self._branch(found, rev)
        sha = hashlib.sha1(repr(sorted(files)).encode(), usedforsecurity=False).hexdigest()
        siblings = [{"rfilename": path} for path in sorted(files)]
        return 200, {"id": repo, "sha": sha, "private": found.private, "siblings": siblings}, {}

    def create_branch(self, body: bytes, repo: str, rev: str) -> tuple[int, Any, dict[str, str]]:
        self._writer(repo)
        found = self._repo(repo)
        if rev in found.branches:
            raise _HttpError(409, f"Reference {rev} already exists")
        found.branches[rev] = dict(found.branches["main"])
        return 200, {}, {}

    def validate_yaml(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        content = json.loads(body)["content"]
        match = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": f"YAML: {error}"}]}, {}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata is not a mapping"}]}, {}
        return 200, {"warnings": []}, {}

    def preupload(self, body: bytes, repo: str, rev: str) -> tuple[int, Any, dict[str, str]]:
        self._writer(repo)
        existing = self._branch(self._repo(repo), rev)
        answer = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or b"\0" in sample or item["size"] > 10**7
            data = existing.get(item["path"])
            oid = None
            if data is not None:
                oid = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
            mode = "lfs" if lfs else "regular"
            answer.append(
                {"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid}
            )
        return 200, {"files": answer}, {}

    def lfs_batch(self, body: bytes, repo: str) -> tuple[int, Any, dict[str, str]]:
        self._writer(repo)
        self._repo(repo)
        payload = json.loads(body)
        objects = []
        for item in payload["objects"]:
            oid, size = item["oid"], item["size"]
            entry: dict[str, Any] = {"oid": oid, "size": size}
            if self.state.lfs.get(oid) is not None and len(self.state.lfs[oid]) == size:
                objects.append(entry)  # already stored: no actions, nothing to send again
                continue
            verify = {"href": f"{self.base_url}/lfs-verify/{oid}"}
            if size > self.state.multipart_threshold:
                chunk = self.state.chunk_size
                header: dict[str, Any] = {"chunk_size": str(chunk)}
                for part in range(1, -(-size // chunk) + 1):
                    header[str(part)] = f"{self.base_url}/lfs-part/{oid}/{part}"
                upload = {"href": f"{self.base_url}/lfs-complete/{oid}", "header": header}
            else:
                upload = {"href": f"{self.base_url}/lfs-upload/{oid}/{size}"}
            entry["actions"] = {"upload": upload, "verify": verify}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def lfs_upload(self, body: bytes, oid: str, size: str) -> tuple[int, Any, dict[str, str]]:
        self._store(oid, int(size), body)
        return 200, {}, {}

    def lfs_part(self, body: bytes, oid: str, part: str) -> tuple[int, Any, dict[str, str]]:
        self.state.parts[(oid, int(part))] = body
        return 200, {}, {"ETag": f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'}

    def lfs_complete(self, body: bytes, oid: str) -> tuple[int, Any, dict[str, str]]:
        payload = json.loads(body)
        data = b""
        for part in payload["parts"]:
            chunk = self.state.parts.get((oid, part["partNumber"]))
            etag = f'"{hashlib.md5(chunk or b"", usedforsecurity=False).hexdigest()}"'
            if chunk is None or part["etag"] != etag:
                raise _HttpError(400, f"part {part['partNumber']} of {oid} missing or bad etag")
            data += chunk
        self._store(oid, len(data), data)
        return 200, {}, {}

    def lfs_verify(self, body: bytes, oid: str) -> tuple[int, Any, dict[str, str]]:
        payload = json.loads(body)
        if len(self.state.lfs.get(oid, b"")) != payload["size"] or oid not in self.state.lfs:
            raise _HttpError(404, f"LFS object {oid} not found")
        return 200, {}, {}

    def _store(self, oid: str, size: int, data: bytes) -> None:
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise _HttpError(400, f"content does not match oid {oid} and size {size}")
        self.state.lfs[oid] = data

    def commit(self, body: bytes, repo: str, rev: str) -> tuple[int, Any, dict[str, str]]:
        self._writer(repo)
        found = self._repo(repo)
        files = dict(self._branch(found, rev))
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header" or not lines[0]["value"]["summary"]:
            raise _HttpError(400, "the commit's first line must be a header with a summary")
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                data = self.state.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    raise _HttpError(422, f"LFS object of {value['path']} was never uploaded")
                files[value["path"]] = data
            else:
                raise _HttpError(400, f"unsupported commit line {line['key']}")
        if self.state.fail_commits:
            self.state.fail_commits -= 1
            raise _HttpError(500, "internal error while committing")
        found.branches[rev] = files
        oid = hashlib.sha1(repr(sorted(files)).encode() + body, usedforsecurity=False).hexdigest()
        found.commits.append(oid)
        url = f"{self.base_url}/{repo}/commit/{oid}"
        return 200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None}, {}


_ROUTES = (
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/models/{_REPO}", "repo_info"),
    ("GET", rf"/api/models/{_REPO}/revision/{_REV}", "repo_info"),
    ("POST", rf"/api/models/{_REPO}/branch/{_REV}", "create_branch"),
    ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", "preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/{_REV}", "commit"),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-upload/(?P<oid>\w+)/(?P<size>\d+)", "lfs_upload"),
    ("PUT", r"/lfs-part/(?P<oid>\w+)/(?P<part>\d+)", "lfs_part"),
    ("POST", r"/lfs-complete/(?P<oid>\w+)", "lfs_complete"),
    ("POST", r"/lfs-verify/(?P<oid>\w+)", "lfs_verify"),
)


def point_huggingface_hub_at(monkeypatch: Any, url: str, token_file: str) -> None:
    """Aim this process's huggingface_hub at the loopback server, with nothing of the machine's.

    HF_ENDPOINT is read by finetty at call time; the constants below were read at import time.
    The token file is a temp one (the machine's login is never seen), offline mode is lifted
    (the test suite sets HF_HUB_OFFLINE) and Xet is off: this server speaks the LFS protocol,
    not Xet's content-addressed store, so uploads take huggingface_hub's LFS path.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", token_file)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)


@contextlib.contextmanager
def loopback_hub(monkeypatch: Any, tmp_path: Path) -> Iterator[HubState]:
    """A served hub with alice (tok-alice: member of team, reader of readers) and bob
    (tok-bob), this process's huggingface_hub pointed at it, logged in as alice by HF_TOKEN."""
    state = HubState()
    state.add_user("alice", "tok-alice", orgs={"team": "write", "readers": "read"})
    state.add_user("bob", "tok-bob")
    with HubServer(state) as server:
        point_huggingface_hub_at(monkeypatch, server.url, str(tmp_path / "hf-home" / "token"))
        monkeypatch.setenv("HF_TOKEN", "tok-alice")
        yield state

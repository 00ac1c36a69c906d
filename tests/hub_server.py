"""A local stand-in for the Hugging Face Hub: just enough of its HTTP protocol for push and load by repo id.

No installable Hub server exists, so the tests run this stdlib `http.server` on 127.0.0.1 and point the real
`huggingface_hub` client at it. It answers the routes the client uses to push (`create_repo`, `create_commit`) and to
download (`hf_hub_download`, hence `from_pretrained("user/repo")`), and keeps every repo's files in a folder.
Every request is recorded, so a test can assert that a failing push sent nothing.

The response shapes follow huggingface_hub 2.4 (`hf_api.create_repo`, `_commit_api._fetch_upload_modes`,
`_commit_api._send_commit`, `file_download.get_hf_file_metadata`, `utils._http.hf_raise_for_status`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import unquote, urlsplit

import pytest
import yaml

REPO_ID = r"(?P<repo>[\w.-]+/[\w.-]+)"
REVISION = r"(?P<rev>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(rf"/api/models/{REPO_ID}/preupload/{REVISION}"), "preupload"),
    ("POST", re.compile(rf"/api/models/{REPO_ID}/commit/{REVISION}"), "commit"),
    ("GET", re.compile(rf"/api/models/{REPO_ID}(?:/revision/{REVISION})?"), "model_info"),
    ("GET", re.compile(rf"/{REPO_ID}/resolve/{REVISION}/(?P<path>.+)"), "resolve"),
    ("HEAD", re.compile(rf"/{REPO_ID}/resolve/{REVISION}/(?P<path>.+)"), "resolve"),
    ("GET", re.compile(r"/api/agent-harnesses"), "agent_harnesses"),
]


class HubServer:
    """A threaded Hub-protocol server on 127.0.0.1 with a random port, storing repos under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unhandled: list[tuple[str, str]] = []  # requests no route matched: the client needs more protocol
        self.commits: dict[str, list[str]] = {}  # repo id -> commit oids, oldest first
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def repo_files(self, repo_id: str) -> dict[str, bytes]:
        """Path in repo -> content of every file at the head of `main`."""
        folder = self.root / repo_id
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    # --- route handlers: each returns (status, headers, body) ---------------------------------------------------

    def create_repo(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            return _error(400, "BadRequest", "only model repos are served")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if "/" not in repo_id:
            repo_id = f"user/{repo_id}"  # the real Hub puts a bare name in the token owner's namespace
        url = f"{self.url}/{repo_id}"
        with self._lock:
            if repo_id in self.commits:
                return 409, {"Content-Type": "application/json"}, _json({"error": "Repo already exists", "url": url})
            self.commits[repo_id] = []
            (self.root / repo_id).mkdir(parents=True)
        return 200, {"Content-Type": "application/json"}, _json({"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, flags=re.DOTALL)
        if match is None:
            return 200, {}, _json({"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            return 400, {"X-Error-Message": "Invalid YAML"}, _json({"errors": [{"message": str(err)}]})
        if not isinstance(metadata, dict):
            return 400, {"X-Error-Message": "Invalid YAML"}, _json({"errors": [{"message": "metadata is not a map"}]})
        return 200, {"Content-Type": "application/json"}, _json({"errors": [], "warnings": []})

    def preupload(self, body: bytes, repo: str, rev: str) -> tuple[int, dict[str, str], bytes]:
        if repo not in self.commits:
            return _error(404, "RepoNotFound", f"Repository {repo} not found")
        # "regular" makes the client send contents inline in the commit call, so no LFS/Xet storage is needed.
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for f in json.loads(body)["files"]
        ]
        return 200, {"Content-Type": "application/json"}, _json({"files": files, "commitOid": self._head(repo)})

    def commit(self, body: bytes, repo: str, rev: str) -> tuple[int, dict[str, str], bytes]:
        if repo not in self.commits:
            return _error(404, "RepoNotFound", f"Repository {repo} not found")
        folder = self.root / repo
        digest = hashlib.sha1(self._head(repo).encode())
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                target = _inside(folder, value["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                digest.update(value["path"].encode() + hashlib.sha256(data).digest())
            elif key == "deletedFile":
                _inside(folder, value["path"]).unlink(missing_ok=True)
                digest.update(b"-" + value["path"].encode())
            elif key != "header":
                return _error(400, "BadRequest", f"unsupported commit operation {key!r}")
        oid = digest.hexdigest()
        with self._lock:
            self.commits[repo].append(oid)
        commit_url = f"{self.url}/{repo}/commit/{oid}"
        return (
            200,
            {"Content-Type": "application/json"},
            _json({"commitUrl": commit_url, "commitOid": oid, "pullRequestUrl": None, "success": True}),
        )

    def model_info(self, body: bytes, repo: str, rev: str | None = None) -> tuple[int, dict[str, str], bytes]:
        if repo not in self.commits:
            return _error(404, "RepoNotFound", f"Repository {repo} not found")
        siblings = [{"rfilename": name} for name in self.repo_files(repo)]
        info = {"id": repo, "modelId": repo, "sha": self._head(repo), "private": False, "siblings": siblings}
        return 200, {"Content-Type": "application/json"}, _json(info)

    def resolve(self, body: bytes, repo: str, rev: str, path: str) -> tuple[int, dict[str, str], bytes]:
        if repo not in self.commits:
            return _error(404, "RepoNotFound", f"Repository {repo} not found")
        if rev not in ("main", self._head(repo)):
            return _error(404, "RevisionNotFound", f"Revision {rev} not found")
        target = _inside(self.root / repo, path)
        if not target.is_file():
            return _error(404, "EntryNotFound", f"{path} does not exist on {rev}")
        data = target.read_bytes()
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": self._head(repo),
        }
        return 200, headers, data

    def agent_harnesses(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        # The client fetches this registry only to fill its user agent, and carries on without it.
        return _error(404, "NotFound", "no agent registry here")

    def _head(self, repo: str) -> str:
        return self.commits[repo][-1] if self.commits.get(repo) else "0" * 40


def use_endpoint(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point this process's huggingface_hub and transformers at `url`, as `HF_ENDPOINT=url` would at startup.

    `HF_ENDPOINT` is read once, when huggingface_hub is imported, into `constants.ENDPOINT`, the download URL
    template, the module-level `HfApi` and transformers' shared `HfApi`; each is patched for the test's duration.
    """
    import huggingface_hub.hf_api
    import transformers.utils.hub
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", url)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", HfApi(endpoint=url, library_name="transformers"))


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Dispatches one request to the HubServer route that matches it."""

        def _dispatch(self) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub._lock:
                hub.requests.append((self.command, path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            for method, pattern, name in ROUTES:
                match = pattern.fullmatch(path)
                if method == self.command and match:
                    status, headers, payload = getattr(hub, name)(body, **match.groupdict())
                    break
            else:
                with hub._lock:
                    hub.unhandled.append((self.command, path))
                status, headers, payload = _error(404, "NotFound", f"no route for {self.command} {path}")
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch  # noqa: N815 (http.server looks these names up)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest output clean; `hub.requests` is the log

    return Handler


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    # huggingface_hub maps X-Error-Code to its exception classes (EntryNotFoundError, RepositoryNotFoundError, ...).
    headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
    return status, headers, _json({"error": message})


def _inside(folder: Path, path: str) -> Path:
    target = (folder / path).resolve()
    if folder.resolve() not in target.parents:
        raise ValueError(f"path {path!r} escapes the repo folder")
    return target

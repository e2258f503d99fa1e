"""A local stand-in for the Hugging Face Hub's HTTP API, for tests: the real Hub cannot be reached from here.

A real HTTP server (Starlette under uvicorn, in a thread of the test process, on loopback) that answers the calls
huggingface_hub 2.x makes to create a repo (POST /api/repos/create), commit to it (validate-yaml, preupload, the
LFS batch API with the basic transfer, the ndjson commit, branches) and read it back (GET /api/models/{repo}, HEAD
and GET of /{repo}/resolve/{revision}/{path}). Repos live in memory, file contents on disk. Bearer tokens are
checked as the Hub checks them: an unknown token is a 401 "Invalid credentials", a namespace that is not the
token's user or one of its organisations is a 403 for writes, and a private repo is "Repository not found" to
anyone else. Xet storage is not offered: processes that upload here run with HF_HUB_DISABLE_XET=1.
"""

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ftctl.localstack import free_port
from tests.hub_store import GITATTRIBUTES, HubStore, HubUser, Repo, StoredFile, is_lfs


def _error(
    status: int, message: str, code: str | None = None, body: dict | None = None, **headers: str
) -> JSONResponse:
    extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **headers}
    return JSONResponse({"error": message, **(body or {})}, status_code=status, headers=extra)


@dataclass
class HubStandIn(HubStore):
    """The Hub's state and its HTTP app; `url` is set while `hub_stand_in` serves it."""

    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, user (None: anonymous)
    url: str = ""

    # --- who asks ---

    def _user(self, request: Request) -> HubUser | None | JSONResponse:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        user = next((u for u in self.users if u.token == token), None) if token else None
        self.requests.append((request.method, request.url.path, user.name if user else None))
        if token and user is None:
            return _error(401, "Invalid credentials in Authorization header")
        return user

    def _readable(self, request: Request) -> tuple[Repo, HubUser | None] | JSONResponse:
        repo_id = _repo_id(request)
        user = self._user(request)
        if isinstance(user, JSONResponse):
            return user
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and (user is None or repo_id.split("/")[0] not in user.namespaces)):
            return _error(401, "Repository not found", "RepoNotFound")
        return repo, user

    def _writable(self, request: Request) -> Repo | JSONResponse:
        found = self._readable(request)
        if isinstance(found, JSONResponse):
            return found
        repo, user = found
        if user is None or repo.repo_id.split("/")[0] not in user.namespaces:
            return _error(403, f"You don't have the rights to write to {repo.repo_id}: it is not in your namespaces")
        return repo

    # --- the endpoints ---

    async def validate_yaml(self, request: Request) -> Response:
        found = self._user(request)
        if isinstance(found, JSONResponse):
            return found
        content = (await request.json()).get("content", "")
        if not content.startswith("---\n") or "\n---\n" not in content[4:]:
            return JSONResponse({"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        return JSONResponse({"errors": [], "warnings": []})

    async def create_repo(self, request: Request) -> Response:
        user = self._user(request)
        if isinstance(user, JSONResponse):
            return user
        body = await request.json()
        if user is None:
            return _error(401, "You must be authenticated to create a repo")
        namespace = body.get("organization") or user.name
        repo_id = f"{namespace}/{body['name']}"
        if namespace not in user.namespaces:
            return _error(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        with self.lock:
            if repo_id in self.repos:
                return _error(409, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"})
            private = body.get("visibility") == "private" or bool(body.get("private"))
            self.repos[repo_id] = repo = Repo(repo_id, private)
            self._commit(repo, "main", {".gitattributes": self._store(".gitattributes", GITATTRIBUTES)}, "initial")
        return JSONResponse({"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    async def model_info(self, request: Request) -> Response:
        found = self._readable(request)
        if isinstance(found, JSONResponse):
            return found
        repo, _ = found
        revision = unquote(request.path_params.get("rev", "main"))
        commit = repo.commit_of(revision)
        if commit is None:
            return _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        siblings = [
            {
                "rfilename": p,
                "size": f.size,
                **({"lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134}} if f.lfs else {}),
            }
            for p, f in sorted(repo.trees[commit].items())
        ]
        return JSONResponse({"id": repo.repo_id, "sha": commit, "private": repo.private, "siblings": siblings})

    async def create_branch(self, request: Request) -> Response:
        with self.lock:
            repo = self._writable(request)
            if isinstance(repo, JSONResponse):
                return repo
            branch = unquote(request.path_params["branch"])
            if branch in repo.branches:
                return _error(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = repo.branches["main"]
        return JSONResponse({})

    async def preupload(self, request: Request) -> Response:
        repo = self._writable(request)
        if isinstance(repo, JSONResponse):
            return repo
        tree = repo.trees.get(repo.commit_of(unquote(request.path_params["rev"])) or "", {})
        answers = []
        for item in (await request.json())["files"]:
            known = tree.get(item["path"])
            oid = known.oid((self.blobs / known.sha256).read_bytes()) if known else None
            mode = "lfs" if is_lfs(item["path"], item["size"]) else "regular"
            answers.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return JSONResponse({"files": answers})

    async def lfs_batch(self, request: Request) -> Response:
        repo = self._writable(request)
        if isinstance(repo, JSONResponse):
            return repo
        objects = []
        for obj in (await request.json())["objects"]:
            known = (self.blobs / obj["oid"]).is_file()
            upload = {"upload": {"href": f"{self.url}/lfs-objects/{obj['oid']}"}}
            objects.append({"oid": obj["oid"], "size": obj["size"], **({} if known else {"actions": upload})})
        return JSONResponse({"transfer": "basic", "objects": objects})

    async def lfs_upload(self, request: Request) -> Response:
        oid, content = request.path_params["oid"], await request.body()
        if hashlib.sha256(content).hexdigest() != oid:
            return _error(400, "the uploaded content does not match its sha256 oid")
        (self.blobs / oid).write_bytes(content)
        return Response(status_code=200)

    async def commit(self, request: Request) -> Response:
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        with self.lock:
            repo = self._writable(request)
            if isinstance(repo, JSONResponse):
                return repo
            branch = unquote(request.path_params["rev"])
            if branch not in repo.branches:
                return _error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            changes: dict[str, StoredFile | None] = {}
            summary = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value["summary"]
                elif key == "file":
                    changes[value["path"]] = self._store(value["path"], base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    if not (self.blobs / value["oid"]).is_file():
                        return _error(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    changes[value["path"]] = StoredFile(value["oid"], value["size"], True)
                elif key in ("deletedFile", "deletedFolder"):
                    changes[value["path"]] = None
            commit = self._commit(repo, branch, changes, summary)
        url = f"{self.url}/{repo.repo_id}/commit/{commit}"
        return JSONResponse({"success": True, "commitOid": commit, "commitUrl": url, "pullRequestUrl": None})

    async def resolve(self, request: Request) -> Response:
        found = self._readable(request)
        if isinstance(found, JSONResponse):
            return found
        repo, _ = found
        revision, path = unquote(request.path_params["rev"]), request.path_params["path"]
        commit = repo.commit_of(revision)
        if commit is None:
            return _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        stored = repo.trees[commit].get(path)
        if stored is None:
            return _error(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": commit})
        content = (self.blobs / stored.sha256).read_bytes()
        headers = {"X-Repo-Commit": commit, "ETag": f'"{stored.oid(content)}"', "Content-Length": str(stored.size)}
        if stored.lfs:
            headers |= {"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)}
        return Response(b"" if request.method == "HEAD" else content, headers=headers)

    def app(self) -> Starlette:
        repo = "/{ns}/{name}"
        return Starlette(
            routes=[
                Route("/api/validate-yaml", self.validate_yaml, methods=["POST"]),
                Route("/api/repos/create", self.create_repo, methods=["POST"]),
                Route(f"/api/models{repo}", self.model_info, methods=["GET"]),
                Route(f"/api/models{repo}/revision/{{rev}}", self.model_info, methods=["GET"]),
                Route(f"/api/models{repo}/branch/{{branch}}", self.create_branch, methods=["POST"]),
                Route(f"/api/models{repo}/preupload/{{rev}}", self.preupload, methods=["POST"]),
                Route(f"/api/models{repo}/commit/{{rev}}", self.commit, methods=["POST"]),
                Route(f"{repo}/info/lfs/objects/batch", self.lfs_batch, methods=["POST"]),
                Route("/lfs-objects/{oid}", self.lfs_upload, methods=["PUT"]),
                Route(f"{repo}/resolve/{{rev}}/{{path:path}}", self.resolve, methods=["GET", "HEAD"]),
            ]
        )


def _repo_id(request: Request) -> str:
    return f"{request.path_params['ns']}/{request.path_params['name'].removesuffix('.git')}"


@contextmanager
def hub_stand_in(root: Path, users: list[HubUser]) -> Iterator[HubStandIn]:
    """Serve a fresh stand-in on a free loopback port until the block ends; `hub.url` is its HF_ENDPOINT."""
    hub = HubStandIn(root, users)
    port = free_port()
    config = uvicorn.Config(hub.app(), host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="hub-stand-in", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the Hub stand-in did not start"
        time.sleep(0.02)
    hub.url = f"http://127.0.0.1:{port}"
    try:
        yield hub
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def use_in_process(monkeypatch: pytest.MonkeyPatch, hub: HubStandIn, cache: Path) -> None:
    """Point this test process's huggingface_hub at the stand-in, online, without Xet, with its own cache.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and the rest once, at import, so its constants are patched;
    the processes of a stack get the environment variables instead (`hub_env`).
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)


def hub_env(hub: HubStandIn, home: Path) -> dict[str, str]:
    """The environment that points a process of the service at the stand-in (its own HF_HOME, so its own cache)."""
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home)}

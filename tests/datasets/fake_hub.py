"""The Hugging Face Hub's API for tests, which cannot reach it: repos served from local folders, every call recorded.

Only huggingface_hub's network calls are replaced (`HfApi.dataset_info`, `HfApi.model_info`, `hf_hub_download`);
the code under test runs as it does in production. A call's token is recorded as huggingface_hub would send it:
`None` means the process's HF_TOKEN, `False` no token.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import huggingface_hub
import pytest
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoSibling

COMMIT = "c" * 40


@dataclass
class Call:
    what: str  # "info" or "download"
    repo_id: str
    path: str | None
    token: str | None  # the token sent: None when none was


@dataclass
class FakeHub:
    cache: Path
    repos: dict[tuple[str, str], tuple[dict[str, bytes], str | None]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def add(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset", token: str | None = None) -> None:
        """A repo; with `token`, a private one that only that token can read."""
        self.repos[(repo_type, repo_id)] = (files, token)

    def downloads(self, repo_id: str | None = None) -> list[str]:
        return [c.path or "" for c in self.calls if c.what == "download" and repo_id in (None, c.repo_id)]

    def tokens(self) -> set[str | None]:
        return {c.token for c in self.calls}

    def _readable(self, repo_type: str, repo_id: str, token: str | None) -> dict[str, bytes]:
        files, private = self.repos.get((repo_type, repo_id), (None, None))
        if files is None or (private is not None and token != private):
            request = httpx2.Request("GET", f"https://huggingface.co/api/{repo_type}s/{repo_id}")
            response = httpx2.Response(401 if files is not None else 404, request=request)
            raise RepositoryNotFoundError("Repository Not Found", response=response)
        return files

    def info(self, repo_type: str, repo_id: str, token: Any) -> SimpleNamespace:
        sent = _sent(token)
        self.calls.append(Call("info", repo_id, None, sent))
        files = self._readable(repo_type, repo_id, sent)
        siblings = [RepoSibling(rfilename=name, size=len(data)) for name, data in files.items()]
        return SimpleNamespace(sha=COMMIT, siblings=siblings)

    def download(self, repo_id: str, filename: str, repo_type: str | None, revision: str | None, token: Any) -> str:
        sent = _sent(token)
        self.calls.append(Call("download", repo_id, filename, sent))
        files = self._readable(repo_type or "model", repo_id, sent)
        assert revision == COMMIT, "files are fetched at the listed commit"
        target = self.cache / f"{repo_type or 'model'}s--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[filename])
        return str(target)


def _sent(token: Any) -> str | None:
    if token is None:  # huggingface_hub's default: the service's own token
        return os.environ.get("HF_TOKEN")
    return None if token is False else str(token)


def install(monkeypatch: pytest.MonkeyPatch, cache: Path) -> FakeHub:
    hub = FakeHub(cache)

    def dataset_info(self: object, repo_id: str, *, token: Any = None, **_: Any) -> SimpleNamespace:
        return hub.info("dataset", repo_id, token)

    def model_info(self: object, repo_id: str, *, token: Any = None, **_: Any) -> SimpleNamespace:
        return hub.info("model", repo_id, token)

    def hf_hub_download(
        repo_id: str, filename: str, *, repo_type: str | None = None, revision: str | None = None, token: Any = None
    ) -> str:
        return hub.download(repo_id, filename, repo_type, revision, token)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setenv("HF_TOKEN", "hf_service_token")  # the service's own token, which no tenant read may send
    return hub

"""The state of the Hub stand-in (tests/hub_server.py): its users, repos (branches, commits, trees) and file contents.

Repos and commits live in memory; file contents on disk, one file per sha256, as LFS objects are named.
"""

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

LFS_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model", ".png", ".jpg", ".zip"}
LFS_ABOVE = 10 * 1024 * 1024  # the Hub sends larger files to LFS whatever their name
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


@dataclass(frozen=True)
class HubUser:
    name: str
    token: str
    orgs: tuple[str, ...] = ()

    @property
    def namespaces(self) -> set[str]:
        return {self.name, *self.orgs}


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size: int
    lfs: bool

    def oid(self, content: bytes) -> str:
        """The Hub's oid: the sha256 for an LFS file, the git blob sha1 for a regular one."""
        return self.sha256 if self.lfs else hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit
    trees: dict[str, dict[str, StoredFile]] = field(default_factory=dict)  # commit -> path -> file
    summaries: dict[str, str] = field(default_factory=dict)  # commit -> its message

    def commit_of(self, revision: str) -> str | None:
        return self.branches.get(revision) or (revision if revision in self.trees else None)


@dataclass
class HubStore:
    """Users, repos and blobs; `seed`, `files` and `content` are what tests use directly."""

    root: Path
    users: list[HubUser]
    repos: dict[str, Repo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, StoredFile]:
        repo = self.repos[repo_id]
        return dict(repo.trees[repo.commit_of(revision) or ""])

    def content(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return (self.blobs / self.files(repo_id, revision)[path].sha256).read_bytes()

    def seed(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """A repo made by someone else, with these files in one commit; returns the commit."""
        with self.lock:
            self.repos[repo_id] = Repo(repo_id, private)
            return self._commit(self.repos[repo_id], "main", {p: self._store(p, c) for p, c in files.items()}, "seed")

    def _store(self, path: str, content: bytes) -> StoredFile:
        sha = hashlib.sha256(content).hexdigest()
        (self.blobs / sha).write_bytes(content)
        return StoredFile(sha, len(content), is_lfs(path, len(content)))

    def _commit(self, repo: Repo, branch: str, changes: dict[str, StoredFile | None], summary: str) -> str:
        parent = repo.branches.get(branch, "")
        tree = {**repo.trees.get(parent, {}), **{p: f for p, f in changes.items() if f is not None}}
        for path in [p for p, f in changes.items() if f is None]:
            tree.pop(path, None)
        listing = json.dumps(sorted((p, f.sha256) for p, f in tree.items()))
        commit = hashlib.sha1(f"{parent}\n{summary}\n{listing}\n{time.time_ns()}".encode()).hexdigest()
        repo.trees[commit], repo.summaries[commit], repo.branches[branch] = tree, summary, commit
        return commit


def is_lfs(path: str, size: int) -> bool:
    return PurePosixPath(path).suffix.lower() in LFS_SUFFIXES or size > LFS_ABOVE

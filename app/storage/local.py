"""The local-directory store: FT_DATA_DIR itself (one disk, or a volume every process mounts). Keys are paths."""

import shutil
from collections.abc import Iterator
from pathlib import Path

from app.storage.backend import CHUNK_BYTES


def tree_size(path: Path) -> int:
    """Bytes in a file, or in every file under a directory (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def remove_tree(path: Path) -> int:
    """Delete a file or directory; returns the bytes freed (0 when it was already gone)."""
    size = tree_size(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return size


class LocalStore:
    """Files under one root directory; writing a file onto itself (the usual case) copies nothing."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def path(self, key: str) -> Path:
        """The file a key names, refusing keys that would leave the root."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def put_file(self, key: str, local_path: Path, low_memory: bool = False) -> None:
        self._copy(local_path.resolve(), self.path(key))

    def get_file(self, key: str, local_path: Path) -> None:
        source = self.path(key)
        if source == local_path.resolve():
            return
        if not source.is_file():
            raise FileNotFoundError(f"no stored file {key!r}")
        self._copy(source, local_path.resolve())

    def open_read(self, key: str) -> tuple[Iterator[bytes], int]:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no stored file {key!r}")
        return _chunks(path), path.stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        base = self.path(prefix)
        if base.is_file():
            return [(prefix, base.stat().st_size)]
        found = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        return [(str(p.relative_to(self.root)), p.stat().st_size) for p in found]

    def delete_prefix(self, prefix: str) -> int:
        return remove_tree(self.path(prefix))

    def size_of_prefix(self, prefix: str) -> int:
        return tree_size(self.path(prefix))

    def presigned_url(self, key: str, filename: str) -> str | None:
        return None

    @staticmethod
    def _copy(source: Path, dest: Path) -> None:
        if source == dest:
            return  # already in its place: the embedded default never copies
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        shutil.copyfile(source, partial)
        partial.replace(dest)


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk

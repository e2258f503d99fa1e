"""The store every machine shares: what the local-directory and S3 backends both do."""

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

CHUNK_BYTES = 1 << 20


class Store(Protocol):
    """Files by key (a relative path such as `jobs/job_x/adapter.tar.gz`). A missing key raises FileNotFoundError."""

    def put_file(self, key: str, local_path: Path, low_memory: bool = False) -> None:
        """Store the file at local_path under key (replacing what was there); `low_memory`: fewer parallel parts
        (the API, which does this while it takes other uploads)."""

    def get_file(self, key: str, local_path: Path) -> None:
        """Write the stored file to local_path, atomically (never a half-written file under that name)."""

    def open_read(self, key: str) -> tuple[Iterator[bytes], int]:
        """The stored file as chunks, and its size in bytes, for streaming a download."""

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every stored file whose key starts with prefix."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete the key, or every key under a prefix ending in `/`; returns the bytes freed."""

    def size_of_prefix(self, prefix: str) -> int:
        """Bytes stored under the prefix (GET /usage)."""

    def presigned_url(self, key: str, filename: str) -> str | None:
        """A time-limited URL a client can download the file from without the API; None when there is none."""

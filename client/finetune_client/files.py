"""What both clients do the same way off the wire: job specs from files, upload parts, checked downloads."""

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

import httpx

from finetune_client.errors import ChecksumMismatch

SpecSource = Mapping[str, Any] | str | os.PathLike[str]
UploadSource = str | os.PathLike[str] | bytes | BinaryIO


def load_spec(spec: SpecSource) -> dict[str, Any]:
    """A job spec from a dict, or from a .json, .yaml or .yml file (YAML needs `pip install finetune-client[yaml]`)."""
    if isinstance(spec, Mapping):
        return dict(spec)
    path = Path(spec)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(f"{path}: YAML specs need PyYAML: pip install 'finetune-client[yaml]'") from None
        loaded = yaml.safe_load(text)
    else:
        loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a job spec is a mapping (base_model, dataset, ...), got {type(loaded).__name__}")
    return loaded


@contextmanager
def upload_part(source: UploadSource, filename: str | None) -> Iterator[tuple[str, bytes | IO[bytes]]]:
    """The multipart `file` field for a path, bytes or binary file; a path is opened here and closed after."""
    if isinstance(source, bytes):
        yield filename or "dataset.jsonl", source
    elif isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as opened:  # streamed by httpx, never read whole into memory
            yield filename or Path(source).name, opened
    else:
        yield filename or Path(getattr(source, "name", "dataset.jsonl")).name, source


def download_target(path: str | os.PathLike[str] | None, job_id: str, name: str) -> Path:
    """Where a download goes: the path given, inside it when it is a directory, or `JOB-NAME.tar.gz` here."""
    filename = f"{job_id}-{name}.tar.gz"
    if path is None:
        return Path(filename)
    target = Path(path)
    return target / filename if target.is_dir() else target


def announced_sha256(response: httpx.Response) -> str | None:
    """`X-Content-SHA256` from the API's answer, which is a redirect when downloads are presigned object-store URLs."""
    for hop in [*response.history, response]:
        if value := hop.headers.get("X-Content-SHA256"):
            return value.lower()
    return None


class CheckedFile:
    """Writes a download to `target.part`, hashing as it goes; `finish()` keeps it only if the hash matches."""

    def __init__(self, target: Path, expected_sha256: str | None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target, self.expected = target, expected_sha256
        self.part = target.with_name(target.name + ".part")
        self._file = self.part.open("wb")
        self._hash = hashlib.sha256()
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.written += len(chunk)

    def finish(self) -> Path:
        self._file.close()
        actual = self._hash.hexdigest()
        if self.expected and actual != self.expected:
            self.part.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{self.target.name}: downloaded bytes hash to {actual}, the API announced {self.expected}; "
                "the download was corrupted or cut short: download it again"
            )
        self.part.replace(self.target)
        return self.target

    def abandon(self) -> None:
        self._file.close()
        self.part.unlink(missing_ok=True)

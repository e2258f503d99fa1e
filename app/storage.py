"""Where files live under FT_DATA_DIR: datasets, job outputs and artifacts (one local layout)."""

import hashlib
import re
from pathlib import Path

from app.config import settings

SAFE_ID = re.compile(r"^[a-z]+_[0-9a-f]{24}$")


def _checked(identifier: str) -> str:
    # Ids reach paths; only our own id shape is ever joined onto FT_DATA_DIR.
    if not SAFE_ID.fullmatch(identifier):
        raise ValueError(f"not an id: {identifier!r}")
    return identifier


def data_root() -> Path:
    return settings.data_dir.resolve()


def dataset_dir(dataset_id: str) -> Path:
    return data_root() / "datasets" / _checked(dataset_id)


def dataset_rows_path(dataset_id: str) -> Path:
    """The normalised copy every worker reads: one JSON object per line, whatever was uploaded."""
    return dataset_dir(dataset_id) / "rows.jsonl"


def job_dir(job_id: str) -> Path:
    return data_root() / "jobs" / _checked(job_id)


def resolve(relative: str) -> Path:
    """An artifact's stored relative path, resolved and kept inside FT_DATA_DIR."""
    path = (data_root() / relative).resolve()
    if not path.is_relative_to(data_root()):
        raise ValueError(f"path escapes the data directory: {relative!r}")
    return path


def relative(path: Path) -> str:
    return str(path.resolve().relative_to(data_root()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""Datasets: store an upload once (by sha256), normalised to JSONL, scoped to its tenant."""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import storage
from app.auth import Caller
from app.config import settings
from app.dataset_files import parse_dataset
from app.errors import Invalid, NotFound, TooLarge
from app.models import Dataset

SAFE_FILENAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._- ")


def _read_limited(upload: BinaryIO, limit: int) -> bytes:
    chunks, total = [], 0
    while chunk := upload.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"the upload is larger than the {limit:,}-byte limit (FT_MAX_UPLOAD_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def clean_filename(filename: str | None) -> str:
    """Keep only the last path component and harmless characters (the name is shown, never used as a path)."""
    base = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c in SAFE_FILENAME_CHARS else "_" for c in base).strip(" .") or "upload"
    return cleaned[:200]


def create_dataset(
    session: Session, caller: Caller, upload: BinaryIO, filename: str | None, name: str | None
) -> tuple[Dataset, bool]:
    """Parse, store and record an upload; returns (dataset, created). A repeat upload returns the original."""
    data = _read_limited(upload, settings.max_upload_bytes)
    filename = clean_filename(filename)
    sha256 = hashlib.sha256(data).hexdigest()
    existing = session.scalar(
        select(Dataset).where(Dataset.tenant == caller.tenant, Dataset.sha256 == sha256).order_by(Dataset.created_at)
    )
    if existing is not None:
        return existing, False
    parsed = parse_dataset(filename, data)
    if name is not None and not name.strip():
        raise Invalid("name must not be blank")
    staged = _stage_rows(parsed.rows)
    try:
        dataset = Dataset(
            tenant=caller.tenant,
            name=(name or filename)[:200],
            filename=filename,
            format=parsed.format,
            rows=len(parsed.rows),
            columns=parsed.columns,
            size_bytes=len(data),
            sha256=sha256,
        )
        session.add(dataset)
        session.flush()
        final = storage.dataset_dir(dataset.id)
        shutil.rmtree(final, ignore_errors=True)
        staged.rename(final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return dataset, True


def _stage_rows(rows: list[dict]) -> Path:
    # Written beside the final place and renamed into it once the record exists: a failure at any point leaves
    # neither a half-written file nor a record without its rows.
    root = storage.data_root() / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))
    try:
        with open(staged / "rows.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def read_rows(dataset_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A stored dataset's rows (the normalised JSONL every worker reads), the first `limit` of them if given."""
    rows: list[dict[str, Any]] = []
    with storage.dataset_rows_path(dataset_id).open(encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def get_dataset(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant != caller.tenant:
        raise NotFound(f"dataset {dataset_id!r} not found; list yours with GET /datasets")
    return dataset


def list_datasets(session: Session, caller: Caller, limit: int) -> list[Dataset]:
    query = (
        select(Dataset).where(Dataset.tenant == caller.tenant).order_by(Dataset.created_at.desc(), Dataset.id.desc())
    )
    return list(session.scalars(query.limit(limit)))

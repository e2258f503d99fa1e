"""Datasets: store an upload once (by sha256), normalised to JSONL, scoped to its tenant."""

import hashlib
import json
import shutil
import tempfile
from typing import BinaryIO

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
    _write_rows(dataset.id, parsed.rows)
    return dataset, True


def _write_rows(dataset_id: str, rows: list[dict]) -> None:
    # Write beside the final place, then rename: a crash never leaves a half-written dataset behind.
    final = storage.dataset_dir(dataset_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".upload-", dir=final.parent)
    try:
        with open(f"{tmp}/rows.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        shutil.move(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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

"""Datasets: store an upload once (by sha256), normalised to JSONL, scoped to its tenant."""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import storage
from app.core.cursors import keyset_page
from app.core.errors import Conflict, Invalid, NotFound
from app.datasets.files import store_rows
from app.datasets.scan import scan_upload
from app.models import TERMINAL_STATUSES, Dataset, Job
from app.tenants import limits
from app.tenants.auth import Caller, can_see, listing_tenant

SAFE_FILENAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._- ")


def clean_filename(filename: str | None) -> str:
    """Keep only the last path component and harmless characters (the name is shown, never used as a path)."""
    base = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c in SAFE_FILENAME_CHARS else "_" for c in base).strip(" .") or "upload"
    return cleaned[:200]


def create_dataset(
    session: Session, caller: Caller, upload: BinaryIO, filename: str | None, name: str | None
) -> tuple[Dataset, bool]:
    """Parse, store and record an upload; returns (dataset, created). A repeat upload returns the original.

    The upload is read from its spooled file a chunk at a time: once to hash it (and size it: 413 over the limit),
    then row by row into the normalised copy. Memory holds a chunk and a row, whatever the file's size.
    """
    tenant_limits = limits.limits_for(caller.tenant)
    scan = scan_upload(upload, tenant_limits.max_upload_bytes, tenant_limits.source("max_upload_bytes"))
    filename = clean_filename(filename)
    existing = session.scalar(
        select(Dataset)
        .where(Dataset.tenant == caller.tenant, Dataset.sha256 == scan.sha256)
        .order_by(Dataset.created_at)
    )
    if existing is not None:
        return existing, False
    limits.check_storage_quota(session, caller.tenant, scan.size)
    if name is not None and not name.strip():
        raise Invalid("name must not be blank")
    if name is not None and not name.isprintable():
        raise Invalid("name must be printable text (no control characters)")
    staged = _staging_dir()
    try:
        with open(staged / "rows.jsonl", "w", encoding="utf-8") as out:
            stored = store_rows(filename, upload, scan, out)
        dataset = Dataset(
            tenant=caller.tenant,
            name=(name or filename)[:200],
            filename=filename,
            format=stored.format,
            rows=stored.rows,
            columns=stored.columns,
            size_bytes=scan.size,
            sha256=scan.sha256,
        )
        session.add(dataset)
        session.flush()
        final = storage.dataset_dir(dataset.id)
        shutil.rmtree(final, ignore_errors=True)
        staged.rename(final)
        storage.publish(storage.dataset_rows_path(dataset.id), low_memory=True)  # the store workers fetch it from
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return dataset, True


def _staging_dir() -> Path:
    # The rows are written beside their final place and renamed into it once the record exists: a failure at any
    # point (a bad row at the end, a full disk) leaves neither a half-written file nor a record without its rows.
    root = storage.data_root() / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".upload-", dir=root))


def read_rows(dataset_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A stored dataset's rows (the normalised JSONL every worker reads), the first `limit` of them if given."""
    rows: list[dict[str, Any]] = []
    with storage.cached_dataset(dataset_id).open(encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def get_dataset(session: Session, caller: Caller, dataset_id: str, *, admin_may_read: bool = False) -> Dataset:
    """The caller's dataset; 404 alike for another tenant's and a missing one.

    `admin_may_read`: for routes that only show a dataset, where an admin key sees every tenant's. Never for
    a spec's data: a job trains only on its own tenant's datasets, whoever submits it.
    """
    dataset = session.get(Dataset, dataset_id) if storage.SAFE_ID.fullmatch(dataset_id) else None
    if dataset is None or not (dataset.tenant == caller.tenant or (admin_may_read and can_see(caller, dataset.tenant))):
        raise NotFound(f"dataset {dataset_id!r} not found; list yours with GET /datasets")
    return dataset


def list_datasets(
    session: Session, caller: Caller, limit: int, cursor: str | None = None, tenant: str | None = None
) -> tuple[list[Dataset], str | None]:
    """A page of the caller's datasets, newest first, and the next page's cursor (None: the last); an admin may
    name another `tenant`, or `*` for all."""
    query = select(Dataset)
    if (shown := listing_tenant(caller, tenant)) is not None:
        query = query.where(Dataset.tenant == shown)
    return keyset_page(
        session, query, Dataset.created_at, Dataset.id, storage.SAFE_ID, limit, cursor, newest_first=True
    )


def delete_dataset(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    """Delete the caller's dataset record; 409 while a queued or running job uses it. Files go after the commit."""
    dataset = get_dataset(session, caller, dataset_id)
    delete_dataset_record(session, dataset)
    return dataset


def jobs_using(session: Session, dataset: Dataset) -> list[str]:
    """Queued or running jobs that train or evaluate on the dataset."""
    active = session.scalars(select(Job).where(Job.tenant == dataset.tenant, Job.status.not_in(TERMINAL_STATUSES)))
    return [j.id for j in active if dataset.id in (j.dataset_id, (j.spec or {}).get("validation_dataset"))]


def delete_dataset_record(session: Session, dataset: Dataset) -> None:
    """Delete the dataset's row (its files go after the commit); 409 while a queued or running job uses it."""
    using = jobs_using(session, dataset)
    if using:
        raise Conflict(
            f"dataset {dataset.id} is used by {len(using)} queued or running job(s) ({', '.join(using[:5])}); "
            "cancel or wait for them, then delete it"
        )
    session.execute(update(Job).where(Job.dataset_id == dataset.id).values(dataset_id=None))  # finished jobs
    try:
        session.execute(delete(Dataset).where(Dataset.id == dataset.id))
        session.flush()
    except IntegrityError:  # a job naming it was queued in between
        raise Conflict(f"dataset {dataset.id} was just used by a new job; try again once it has finished") from None

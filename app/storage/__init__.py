"""Where files live: paths under FT_DATA_DIR (each machine's working copy) and the store every machine shares.

A file's key is its path relative to FT_DATA_DIR (`jobs/job_x/adapter.tar.gz`), the same string an Artifact row
records. With FT_STORAGE_BACKEND=local (the default) the store *is* FT_DATA_DIR, so publishing and fetching are
no-ops; with `s3` the store is a bucket (app/storage/s3.py) and FT_DATA_DIR is a local cache and scratch space.
"""

import contextlib
import hashlib
import os
import re
import shutil
import tarfile
from pathlib import Path

from app.core.config import settings
from app.storage.backend import Store
from app.storage.local import LocalStore, remove_tree, tree_size

__all__ = ["SAFE_ID", "LocalStore", "Store", "remove_tree", "store", "tree_size"]

SAFE_ID = re.compile(r"^[a-z]+_[0-9a-f]{24}$")
_stores: dict[tuple[object, ...], Store] = {}


def _checked(identifier: str) -> str:
    # Ids reach paths and keys; only our own id shape is ever joined onto FT_DATA_DIR.
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


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{_checked(dataset_id)}/"


def job_prefix(job_id: str) -> str:
    return f"jobs/{_checked(job_id)}/"


def resolve(relative: str) -> Path:
    """An artifact's stored relative path (its key), resolved and kept inside FT_DATA_DIR."""
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


# --- the shared store ---


def store() -> Store:
    """The configured store, one per process (a boto3 client must not cross a fork into Celery's children)."""
    s3 = (settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region)
    key = (os.getpid(), settings.storage_backend, data_root(), s3)
    if key not in _stores:
        if settings.storage_backend == "s3":
            from app.storage.s3 import S3Store  # boto3 is imported only where it is used

            _stores[key] = S3Store.from_settings(settings)
        else:
            _stores[key] = LocalStore(data_root())
    return _stores[key]


def is_shared_disk() -> bool:
    """True when FT_DATA_DIR itself is the store (local backend): nothing is copied anywhere."""
    return isinstance(store(), LocalStore)


def publish(path: Path, low_memory: bool = False) -> str:
    """Upload a file written under FT_DATA_DIR to the store under its relative path; returns the key.

    `low_memory`: send fewer parts at once (the API publishing an upload's rows; workers keep the default)."""
    key = relative(path)
    store().put_file(key, path, low_memory)
    return key


def cached(key: str) -> Path:
    """The local copy of a stored file, downloaded into FT_DATA_DIR first when this machine lacks it.

    Returns the path whether or not the file exists (a key the store does not hold): callers check `is_file()`.
    """
    path = resolve(key)
    if not path.is_file():
        with contextlib.suppress(FileNotFoundError):  # not stored either: the caller reports what is missing
            store().get_file(key, path)
    return path


def cached_dataset(dataset_id: str) -> Path:
    """A dataset's rows.jsonl on this machine (datasets never change once stored, so a cached copy stays valid)."""
    return cached(relative(dataset_rows_path(dataset_id)))


def local_adapter_dir(job_id: str) -> Path:
    """A job's trained adapter, unpacked under FT_DATA_DIR/jobs/<id>/adapter (from the store when not here)."""
    adapter_dir = job_dir(job_id) / "adapter"
    if is_shared_disk():
        return adapter_dir
    key = job_prefix(job_id) + "adapter.tar.gz"
    if not store().exists(key):  # deleted or expired: a copy left on this machine must not be served
        shutil.rmtree(adapter_dir, ignore_errors=True)
        return adapter_dir
    if not (adapter_dir / "adapter_config.json").is_file():
        unpack(cached(key), adapter_dir)
    return adapter_dir


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a .tar.gz into dest, atomically (a half-extracted directory is never seen under dest's name)."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(partial, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def remove(prefix: str) -> int:
    """Delete a key, or every key under a prefix ending in `/`, from the store and this machine's copy.

    Returns the bytes freed in the store (for the local backend, on disk).
    """
    freed = store().delete_prefix(prefix)
    if not is_shared_disk():
        remove_tree(resolve(prefix))
    return freed

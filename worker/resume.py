"""Resumable checkpoints across machines: the Trainer's full checkpoint (adapter, optimizer, scheduler, RNG state)
kept in the object store, so a job whose worker disappeared resumes on any other machine.

With the local backend FT_DATA_DIR is the shared store and `jobs/<id>/trainer/checkpoint-N` is already where the next
attempt looks, so nothing is copied. With S3 each checkpoint, once recorded, is also packed as
`jobs/<id>/resume/checkpoint-N.tar.gz` (only the newest is kept); a worker that lacks it locally downloads and unpacks
it into its own trainer directory, marked complete (an archive in the store was uploaded whole), before resuming.
The packed adapter-only checkpoints (downloads) are separate.
"""

import logging
import re
import shutil
from pathlib import Path

from app import storage
from worker.artifacts import pack_directory
from worker.training.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint

log = logging.getLogger(__name__)
RESUME_ARCHIVE = re.compile(r"/resume/checkpoint-(\d+)\.tar\.gz$")


def _resume_prefix(job_id: str) -> str:
    return storage.job_prefix(job_id) + "resume/"


def save_resumable(job_id: str, step: int, checkpoint_dir: Path) -> None:
    """Upload a recorded Trainer checkpoint (S3 only) and drop the older ones from the store."""
    if storage.is_shared_disk():
        return
    archive = storage.job_dir(job_id) / "resume" / f"checkpoint-{step}.tar.gz"
    pack_directory(checkpoint_dir, archive)
    key = storage.publish(archive)
    archive.unlink(missing_ok=True)  # the Trainer's own directory is the local copy
    for older, _ in storage.store().list_keys(_resume_prefix(job_id)):
        if older != key:
            storage.store().delete_prefix(older)


def latest_resumable(job_id: str, trainer_dir: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint, from trainer_dir or, when the store holds a newer one, downloaded from it."""
    local = latest_complete_checkpoint(trainer_dir)
    if storage.is_shared_disk():
        return local
    keys = [key for key, _ in storage.store().list_keys(_resume_prefix(job_id))]
    stored = [(int(m.group(1)), key) for key in keys if (m := RESUME_ARCHIVE.search(key))]
    if not stored or (local and local[0] >= max(stored)[0]):
        return local
    step, key = max(stored)
    log.info("job %s: fetching checkpoint-%d from the store to resume from it", job_id, step)
    archive = storage.cached(key)
    (storage.unpack(archive, trainer_dir / f"checkpoint-{step}") / COMPLETE_MARKER).touch()
    archive.unlink(missing_ok=True)
    return latest_complete_checkpoint(trainer_dir)


def discard_resumable(job_id: str, trainer_dir: Path) -> None:
    """Once the job has ended: its optimizer and RNG state are no longer needed, here or in the store."""
    shutil.rmtree(trainer_dir, ignore_errors=True)
    if not storage.is_shared_disk():
        storage.store().delete_prefix(_resume_prefix(job_id))

"""Removing what is no longer needed: a job's or a dataset's files and rows (DELETE), and the retention sweep.

The sweep runs in every API process (a thread, like the reconciler), every FT_RETENTION_SWEEP_EVERY_SECONDS:
it keeps a job's newest FT_RETENTION_KEEP_LAST_CHECKPOINTS packed checkpoints, drops a succeeded job's
checkpoints (FT_RETENTION_DELETE_CHECKPOINTS_ON_SUCCESS), expires finished jobs' artifacts and unused datasets
(FT_RETENTION_ARTIFACT_DAYS, FT_RETENTION_DATASET_DAYS), and removes directories no row owns. Each removal is
one row deleted by id before its file, so replicas sweeping at once remove each thing once; all are logged.
Files are removed from the store (app/storage/: FT_DATA_DIR, or the S3 bucket and this machine's copy).
"""

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import storage
from app.broker import events
from app.core.config import settings
from app.core.errors import Conflict
from app.core.loops import PeriodicLoop
from app.datasets.service import delete_dataset_record
from app.models import TERMINAL_STATUSES, Artifact, Dataset, Job, utcnow
from app.storage import remove_tree

log = logging.getLogger(__name__)
ORPHAN_AGE_S = 3600  # a directory without its row is left this long: an upload or a job may be mid-commit


def delete_job_record(session: Session, job: Job, keep_metrics: bool) -> None:
    """Delete the job's artifact rows, and the job with its metrics unless `keep_metrics` (files after commit)."""
    session.execute(delete(Artifact).where(Artifact.job_id == job.id))
    if keep_metrics:
        job.artifacts_deleted_at = utcnow()
    else:
        session.execute(delete(Job).where(Job.id == job.id))  # metric points and exports cascade
    session.flush()


def forget_events(job_id: str) -> None:
    """Drop a deleted job's event stream (its cancel flag stays: a running worker must still see it)."""
    try:
        events.redis_client().delete(events.stream_key(job_id))
    except Exception as exc:
        log.warning("job %s: could not remove its events from Redis (%s)", job_id, exc)


# --- the sweep ---


def _cutoff(days: float | None, now: datetime) -> datetime | None:
    return now - timedelta(days=days) if days else None


def _remove_artifact(session: Session, artifact_id: int, path: str, why: str, job_id: str, name: str) -> int:
    won = session.execute(delete(Artifact).where(Artifact.id == artifact_id)).rowcount
    session.commit()
    if not won:
        return 0  # another replica's sweep removed it
    freed = storage.remove(path)
    log.warning("retention: removed %s of job %s (%d bytes): %s", name, job_id, freed, why)
    return freed


def _sweep_checkpoints(session: Session) -> int:
    keep, on_success = settings.retention_keep_last_checkpoints, settings.retention_delete_checkpoints_on_success
    if keep is None and not on_success:
        return 0
    rows = session.execute(
        select(Artifact.id, Artifact.job_id, Artifact.name, Artifact.path, Job.status)
        .join(Job, Job.id == Artifact.job_id)
        .where(Artifact.kind == "checkpoint")
        .order_by(Artifact.job_id, Artifact.step.desc())
    ).all()
    freed, seen = 0, {}
    for artifact_id, job_id, name, path, status in rows:
        seen[job_id] = seen.get(job_id, 0) + 1
        if on_success and status == "succeeded":
            freed += _remove_artifact(session, artifact_id, path, "the job succeeded", job_id, name)
        elif keep is not None and seen[job_id] > keep:
            freed += _remove_artifact(session, artifact_id, path, f"only the last {keep} are kept", job_id, name)
    return freed


def _sweep_artifacts(session: Session, now: datetime) -> int:
    cutoff = _cutoff(settings.retention_artifact_days, now)
    if cutoff is None:
        return 0
    expired = session.scalars(
        select(Job.id).where(
            Job.status.in_(TERMINAL_STATUSES), Job.finished_at < cutoff, Job.artifacts_deleted_at.is_(None)
        )
    ).all()
    freed = 0
    for job_id in expired:
        won = session.execute(
            update(Job).where(Job.id == job_id, Job.artifacts_deleted_at.is_(None)).values(artifacts_deleted_at=now)
        ).rowcount
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        session.commit()
        if won:
            size = storage.remove(storage.job_prefix(job_id))
            freed += size
            log.warning(
                "retention: removed the artifacts of job %s (%d bytes): finished before %s", job_id, size, cutoff
            )
    return freed


def _sweep_datasets(session: Session, now: datetime) -> int:
    cutoff = _cutoff(settings.retention_dataset_days, now)
    if cutoff is None:
        return 0
    freed = 0
    for dataset in session.scalars(select(Dataset).where(Dataset.created_at < cutoff)).all():
        try:
            delete_dataset_record(session, dataset)
            session.commit()
        except Conflict:
            session.rollback()
            continue  # in use: expires once its jobs are done
        size = storage.remove(storage.dataset_prefix(dataset.id))
        freed += size
        log.warning("retention: removed dataset %s (%d bytes): created before %s", dataset.id, size, cutoff)
    return freed


def _sweep_orphans(session: Session) -> int:
    """Directories under datasets/ and jobs/ whose row is gone (a crash between commit and removal)."""
    freed, old = 0, time.time() - ORPHAN_AGE_S
    for kind, model in (("datasets", Dataset), ("jobs", Job)):
        root = storage.data_root() / kind
        candidates = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        for path in candidates:
            staging = path.name.startswith(".upload-")
            if not (staging or storage.SAFE_ID.fullmatch(path.name)) or path.stat().st_mtime > old:
                continue
            if staging or session.get(model, path.name) is None:
                size = remove_tree(path)
                freed += size
                log.warning("retention: removed %s/%s (%d bytes): no record owns it", kind, path.name, size)
    return freed


def sweep_once(make_session: sessionmaker, now: datetime | None = None) -> int:
    """Apply the retention settings once; returns the bytes freed."""
    now = now or utcnow()
    with make_session() as session:
        freed = _sweep_checkpoints(session)
        freed += _sweep_artifacts(session, now)
        freed += _sweep_datasets(session, now)
        freed += _sweep_orphans(session)
    if freed:
        log.warning("retention sweep freed %d bytes", freed)
    return freed


def retention_sweeper(make_session: sessionmaker, interval: float) -> PeriodicLoop:
    """The loop calling sweep_once every FT_RETENTION_SWEEP_EVERY_SECONDS."""
    return PeriodicLoop("retention", interval, lambda: sweep_once(make_session))

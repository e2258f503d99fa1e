"""Jobs: submit (checked against the caller's data), read, list, cancel, metrics and artifacts."""

import base64
import logging
import re
from datetime import datetime

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import storage
from app.broker import events
from app.checks import estimate as estimate_service
from app.checks import service as validate_service
from app.core.errors import Conflict, Invalid, NotFound
from app.fleet.routing import training_queue_for
from app.jobs import retention
from app.jobs.webhooks import notify_job_finished
from app.models import TERMINAL_STATUSES, Artifact, Job, utcnow
from app.spec.job import JobSpec
from app.tenants import limits, quotas
from app.tenants.auth import Caller, can_see, listing_tenant

log = logging.getLogger(__name__)
ARTIFACT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


def create_job(session: Session, caller: Caller, spec: JobSpec, idempotency_key: str | None) -> tuple[Job, bool]:
    """Record a queued job; returns (job, created). Commit, then enqueue: the caller does both."""
    if idempotency_key:
        existing = session.scalar(
            select(Job).where(Job.tenant == caller.tenant, Job.idempotency_key == idempotency_key)
        )
        if existing is not None:
            return existing, False
    limits.check_queued_quota(session, caller.tenant)
    quotas.check_artifact_quota(session, caller.tenant)
    report = validate_service.validate_submission(session, caller, spec)
    spec = estimate_service.spec_to_run(spec, report)  # auto_fit_batch may have lowered the micro-batch
    job = Job(
        tenant=caller.tenant,
        name=spec.name,
        status="queued",
        spec=spec.model_dump(mode="json"),
        dataset_id=spec.dataset if isinstance(spec.dataset, str) else None,
        idempotency_key=idempotency_key,
        estimate=estimate_service.stored_estimate(report),
        queue=training_queue_for(spec.resources),
        priority=spec.priority,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # two retries with one Idempotency-Key raced; the other one won
        session.rollback()
        return session.scalar(
            select(Job).where(Job.tenant == caller.tenant, Job.idempotency_key == idempotency_key)
        ), False
    if job.estimate and job.estimate.get("adjusted"):
        _publish_warning(job.id, job.estimate["adjusted"])
    return job, True


def _publish_warning(job_id: str, message: str) -> None:
    try:
        events.publish(job_id, "warning", {"message": message})
    except Exception:  # live events are best effort: the job's estimate keeps the note
        log.warning("job %s: could not publish warning event", job_id)


def mark_enqueued(session: Session, job: Job) -> None:
    """The broker has the job's message; until then the reconciler keeps re-sending it."""
    job.enqueued_at = utcnow()
    session.commit()


def get_job(session: Session, caller: Caller, job_id: str) -> Job:
    """The job, if the caller may see it; 404 alike for another tenant's job and one that does not exist."""
    job = session.get(Job, job_id) if storage.SAFE_ID.fullmatch(job_id) else None
    if job is None or not can_see(caller, job.tenant):
        raise NotFound(f"job {job_id!r} not found; list yours with GET /jobs")
    return job


def queue_position(session: Session, job: Job) -> int | None:
    """1 for the next of its tenant's jobs its queue hands out: the tenant's queued jobs in the same queue with a
    higher priority, or the same priority and created earlier, are ahead. None unless queued.

    Other tenants' jobs are not counted: a position must not tell a tenant how busy the others are.
    """
    if job.status != "queued":
        return None
    same_priority_earlier = and_(
        Job.priority == job.priority,
        or_(Job.created_at < job.created_at, and_(Job.created_at == job.created_at, Job.id < job.id)),
    )
    ahead = select(func.count()).where(
        Job.tenant == job.tenant,
        Job.status == "queued",
        Job.queue.is_(None) if job.queue is None else Job.queue == job.queue,
        or_(Job.priority > job.priority, same_priority_earlier),
    )
    return 1 + (session.scalar(ahead) or 0)


def _encode_cursor(created_at: datetime, key: str) -> str:
    """An opaque page cursor: where the last row shown sorts (its time, then its id or name)."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{key}".encode()).decode()


def _decode_cursor(cursor: str, key_shape: re.Pattern[str]) -> tuple[datetime, str]:
    try:
        created, key = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        if not key_shape.fullmatch(key):
            raise ValueError(key)
        return datetime.fromisoformat(created), key
    except (ValueError, UnicodeDecodeError):
        raise Invalid("cursor: not a cursor this API returned; pass next_cursor from a previous page") from None


def list_jobs(
    session: Session, caller: Caller, status: str | None, limit: int, cursor: str | None, tenant: str | None = None
) -> tuple[list[Job], str | None]:
    """The caller's jobs, newest first; an admin may name another `tenant`, or `*` for all."""
    query = select(Job)
    if (shown := listing_tenant(caller, tenant)) is not None:
        query = query.where(Job.tenant == shown)
    if status:
        query = query.where(Job.status == status)
    if cursor:
        created, job_id = _decode_cursor(cursor, storage.SAFE_ID)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    jobs = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    next_cursor = _encode_cursor(jobs[limit - 1].created_at, jobs[limit - 1].id) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


def cancel_job(session: Session, caller: Caller, job_id: str) -> Job:
    """Queued: cancelled at once. Running: cancelling; the worker stops at its next step."""
    job = get_job(session, caller, job_id)
    if job.status in TERMINAL_STATUSES:
        raise Conflict(f"job {job.id} is already {job.status}; only queued or running jobs can be cancelled")
    if job.status == "queued":
        job.status, job.finished_at = "cancelled", utcnow()
    elif job.status == "running":
        job.status = "cancelling"
    session.flush()
    events.request_cancel(job.id)
    events.publish(job.id, "status", {"status": job.status})
    return job


def delete_job(session: Session, caller: Caller, job_id: str, keep_metrics: bool) -> tuple[Job, bool]:
    """Cancel the job if it has not ended, then delete its artifact rows, and the job with its metrics unless
    `keep_metrics`; returns (job, cancelled). The caller commits, then removes the files (app/jobs/retention.py).

    A running job deleted whole is told to stop like a cancel; its worker finds the row gone and discards its files.
    """
    job = get_job(session, caller, job_id)
    cancelled = job.status not in TERMINAL_STATUSES
    if cancelled:
        cancel_job(session, caller, job_id)
        if not keep_metrics:  # no worker will record the end of a job that is gone: it ends here
            job.status, job.finished_at = "cancelled", job.finished_at or utcnow()
            session.flush()
        notify_job_finished(job.id, session)
    retention.delete_job_record(session, job, keep_metrics)
    return job, cancelled


def list_artifacts(session: Session, job: Job, kind: str | None = None) -> list[Artifact]:
    """All the job's artifacts, oldest first (internal readers; the API lists pages: artifacts_page)."""
    return list(session.scalars(_artifacts_query(job, kind)))


def _artifacts_query(job: Job, kind: str | None) -> Select[tuple[Artifact]]:
    query = select(Artifact).where(Artifact.job_id == job.id)
    if kind:
        query = query.where(Artifact.kind == kind)
    return query.order_by(Artifact.created_at, Artifact.name)


def artifacts_page(
    session: Session, job: Job, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[Artifact], str | None]:
    """`limit` of the job's artifacts, oldest first, after `cursor`; and the next page's cursor (None: the last)."""
    query = _artifacts_query(job, kind)
    if cursor:
        created, name = _decode_cursor(cursor, ARTIFACT_NAME)
        query = query.where(
            or_(Artifact.created_at > created, and_(Artifact.created_at == created, Artifact.name > name))
        )
    rows = list(session.scalars(query.limit(limit + 1)))
    next_cursor = _encode_cursor(rows[limit - 1].created_at, rows[limit - 1].name) if len(rows) > limit else None
    return rows[:limit], next_cursor


def artifact_file(session: Session, job: Job, name: str) -> tuple[Artifact, str]:
    """The job's artifact called `name` and its storage key; 409 when its file is gone from the store."""
    artifact = None
    if ARTIFACT_NAME.fullmatch(name):  # names reach SQL and file names; anything else is no artifact of ours
        artifact = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name))
    if artifact is None:
        if job.artifacts_deleted_at is not None:
            raise Conflict(
                f"job {job.id}'s files were deleted at {job.artifacts_deleted_at:%Y-%m-%d %H:%M} UTC "
                "(DELETE with keep_metrics, or retention: FT_RETENTION_ARTIFACT_DAYS); its metrics remain"
            )
        if name == "adapter":
            raise Conflict(f"job {job.id} is {job.status}: the adapter exists once the job has succeeded")
        raise NotFound(f"job {job.id} has no artifact {name!r}; see GET /jobs/{job.id}/artifacts")
    if not storage.store().exists(artifact.path):
        raise Conflict(f"artifact {name!r} of job {job.id} is recorded but its file is missing from storage")
    return artifact, artifact.path

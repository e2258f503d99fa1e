"""Jobs: submit (checked against the caller's data), read, list, cancel, metrics and artifacts."""

import hashlib
import json
import logging
import re
from collections.abc import Callable, Hashable, Iterable
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, bindparam, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import storage
from app.broker import events
from app.checks import estimate as estimate_service
from app.checks import service as validate_service
from app.core.cursors import keyset_page
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


def request_hash(spec: JobSpec) -> str:
    """The sha256 of the spec as submitted, canonical (what differs from the defaults, keys sorted): two bodies that
    ask for the same job hash alike however they are spelled, and a field a release adds with a default (as
    `integrations` was) leaves the hash of a body that does not use it as it was, so a retry across an upgrade
    still gets its job back."""
    return _sha256(spec.model_dump(mode="json", exclude_defaults=True))


def legacy_request_hash(spec: JobSpec) -> str:
    """The hash jobs were recorded with before 2026-12 (every default filled in): still accepted for a replay."""
    return _sha256(spec.model_dump(mode="json"))


def _sha256(dumped: dict) -> str:
    return hashlib.sha256(json.dumps(dumped, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replayed(
    session: Session, caller: Caller, idempotency_key: str, spec_hash: str, legacy_hash: str | None = None
) -> Job | None:
    """The job an earlier request with this Idempotency-Key made; 422 if that request asked for another job.

    Jobs recorded before keys were stored with a hash (NULL) are returned as they always were; those recorded with
    the full-dump hash match `legacy_hash`."""
    job = session.scalar(select(Job).where(Job.tenant == caller.tenant, Job.idempotency_key == idempotency_key))
    if job is not None and job.idempotency_hash not in (None, spec_hash, legacy_hash):
        raise Invalid(
            f"Idempotency-Key {idempotency_key!r} was already used for a different request (it made job {job.id}); "
            "send a new key for a new job, or resend that request's exact body to get the same job back"
        )
    return job


def create_job(session: Session, caller: Caller, spec: JobSpec, idempotency_key: str | None) -> tuple[Job, bool]:
    """Record a queued job; returns (job, created). Commit, then enqueue: the caller does both.

    With an Idempotency-Key, a retry of the same request returns the job the first one made (created False),
    and the key reused for a different spec is refused (422) rather than silently answered with that job."""
    spec_hash = legacy_hash = None  # hashed only for a request that carries a key
    if idempotency_key:
        spec_hash, legacy_hash = request_hash(spec), legacy_request_hash(spec)
        if existing := _replayed(session, caller, idempotency_key, spec_hash, legacy_hash):
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
        idempotency_hash=spec_hash,
        estimate=estimate_service.stored_estimate(report),
        queue=training_queue_for(spec.resources),
        priority=spec.priority,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # two retries with one Idempotency-Key raced; the other one won
        session.rollback()
        if spec_hash and (winner := _replayed(session, caller, idempotency_key, spec_hash, legacy_hash)):
            return winner, False
        raise
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


_JOB_BY_ID = select(Job.__table__).where(Job.__table__.c.id == bindparam("job_id"))


def job_row(session: Session, job_id: str) -> Row[Any] | None:
    """The job's row as a plain Row (JobPublic.of and queue_position take it like a Job), or None: one statement
    built once, no ORM loading, for reads that change nothing and run often (polls, event streams)."""
    if not storage.SAFE_ID.fullmatch(job_id):
        return None
    return session.connection().execute(_JOB_BY_ID, {"job_id": job_id}).first()


def read_job(session: Session, caller: Caller, job_id: str) -> Row[Any]:
    """get_job for a read that changes nothing, as a plain row (job_row): GET /jobs/{id} is what dashboards and
    clients poll, and the ORM load cost twice the CPU of the rest of the read (docs/operations.md)."""
    row = job_row(session, job_id)
    if row is None or not can_see(caller, row.tenant):
        raise NotFound(f"job {job_id!r} not found; list yours with GET /jobs")
    return row


@cache
def _position_counts(queue_is_null: bool) -> tuple[Select[Any], Select[Any]]:
    """The two counts of queue_position, built once (they run on every GET of a queued job)."""
    queue = Job.queue.is_(None) if queue_is_null else Job.queue == bindparam("queue")
    line = (Job.tenant == bindparam("tenant"), Job.status == "queued", queue)
    mark = tuple_(bindparam("created_at", type_=Job.created_at.type), bindparam("job_id", type_=Job.id.type))
    higher = select(func.count()).where(*line, Job.priority > bindparam("priority"))
    same = (Job.priority == bindparam("priority"), tuple_(Job.created_at, Job.id) < mark)
    return higher, select(func.count()).where(*line, *same)


def queue_position(session: Session, job: Job | Row[Any]) -> int | None:
    """1 for the next of its tenant's jobs its queue hands out: the tenant's queued jobs in the same queue with a
    higher priority, or the same priority and created earlier, are ahead. None unless queued.

    Other tenants' jobs are not counted: a position must not tell a tenant how busy the others are. Two counts,
    each one range of ix_jobs_queue_line read from the index alone (the higher priorities; the same priority
    created earlier, as a row-value bound), so the database walks the entries ahead and nothing else.
    """
    if job.status != "queued":
        return None
    params = {"tenant": job.tenant, "queue": job.queue, "priority": job.priority, "created_at": job.created_at,
              "job_id": job.id}  # fmt: skip
    connection = session.connection()
    return 1 + sum(connection.execute(count, params).scalar() or 0 for count in _position_counts(job.queue is None))


def _same_line(job: Job) -> list[ColumnElement[bool]]:
    """The jobs sharing `job`'s line: its tenant's queued jobs in its queue (the prefix of ix_jobs_queue_line)."""
    return [
        Job.tenant == job.tenant,
        Job.status == "queued",
        Job.queue.is_(None) if job.queue is None else Job.queue == job.queue,
    ]


def _count(session: Session, *where: ColumnElement[bool]) -> int:
    return session.scalar(select(func.count()).where(*where)) or 0


def queue_positions(session: Session, jobs: list[Job]) -> dict[str, int]:
    """The queue positions of a page of jobs (its queued ones), without two counts per job.

    A page of GET /jobs is one run of the tenant's jobs in creation order, so within one line and priority its
    queued jobs follow one another in the queue too: the group's last job's position is what is ahead of its
    priority, plus that priority's jobs up to it, and the others count back from it. One GROUP BY per line
    gives every priority's total; one count per group finds what follows its last job (little, on the first
    pages), and one checks the group is unbroken (else each of its jobs is counted alone)."""
    positions: dict[str, int] = {}
    queued = [job for job in jobs if job.status == "queued"]
    for line_jobs in _grouped(queued, lambda j: (j.tenant, j.queue)).values():
        line = _same_line(line_jobs[0])
        totals = dict(session.execute(select(Job.priority, func.count()).where(*line).group_by(Job.priority)).all())
        for priority, group in _grouped(line_jobs, lambda j: j.priority).items():
            group.sort(key=lambda j: (j.created_at, j.id))
            first, last = tuple_(group[0].created_at, group[0].id), tuple_(group[-1].created_at, group[-1].id)
            level = [*line, Job.priority == priority]
            key = tuple_(Job.created_at, Job.id)
            if _count(session, *level, key >= first, key <= last) != len(group):
                positions.update({j.id: queue_position(session, j) or 0 for j in group})
                continue
            ahead = sum(n for p, n in totals.items() if p > priority)
            last_position = ahead + totals.get(priority, 0) - _count(session, *level, key > last)
            for offset, job in enumerate(reversed(group)):
                positions[job.id] = last_position - offset
    return positions


def _grouped(jobs: Iterable[Job], by: Callable[[Job], Hashable]) -> dict[Hashable, list[Job]]:
    groups: dict[Hashable, list[Job]] = {}
    for job in jobs:
        groups.setdefault(by(job), []).append(job)
    return groups


def list_jobs(
    session: Session, caller: Caller, status: str | None, limit: int, cursor: str | None, tenant: str | None = None
) -> tuple[list[Job], str | None]:
    """The caller's jobs, newest first; an admin may name another `tenant`, or `*` for all."""
    query = select(Job)
    if (shown := listing_tenant(caller, tenant)) is not None:
        query = query.where(Job.tenant == shown)
    if status:
        query = query.where(Job.status == status)
    return keyset_page(session, query, Job.created_at, Job.id, storage.SAFE_ID, limit, cursor, newest_first=True)


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
    return list(session.scalars(_artifacts_query(job, kind).order_by(Artifact.created_at, Artifact.name)))


def _artifacts_query(job: Job, kind: str | None) -> Select[tuple[Artifact]]:
    query = select(Artifact).where(Artifact.job_id == job.id)
    if kind:
        query = query.where(Artifact.kind == kind)
    return query


def artifacts_page(
    session: Session, job: Job, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[Artifact], str | None]:
    """`limit` of the job's artifacts, oldest first, after `cursor`; and the next page's cursor (None: the last)."""
    query = _artifacts_query(job, kind)
    return keyset_page(
        session, query, Artifact.created_at, Artifact.name, ARTIFACT_NAME, limit, cursor, newest_first=False
    )


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

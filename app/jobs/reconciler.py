"""Keeps the SQL record and the broker in step, so no job is lost or left `running` forever.

Runs in every API process (a thread), safe with many replicas: each change is a compare-and-set.
- A running job whose worker stopped heartbeating (killed, host gone) is requeued, or failed after
  FT_MAX_ATTEMPTS tries; a `cancelling` one becomes `cancelled`.
- A queued job whose message never reached the broker, or was lost with a Redis restart, is re-sent.
"""

import logging
import secrets
import time
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.broker import events
from app.broker.queue import enqueue_training
from app.core.config import settings
from app.core.loops import PeriodicLoop
from app.jobs.webhooks import notify_job_finished
from app.models import Job, utcnow

log = logging.getLogger(__name__)
BROKER_EPOCH_KEY = "ft:broker-epoch"
RESEND_SECONDS = 0.5  # a sweep re-sends for this long at most (a send is ~0.5-2 ms): its budget is 1 s in all
RESEND_ROWS = 2000  # unsent jobs read per sweep: more than RESEND_SECONDS can send
GIVE_UP_AFTER_FAILURES = 3  # sends failed in a row: the broker is down, not one job's message
IN_CHUNK = 500  # ids per UPDATE ... WHERE id IN (...): well under every driver's bound-parameter limit


def _broker_was_reset(session: Session) -> None:
    """Redis without persistence forgets queued messages on restart: resend every queued job."""
    client = events.redis_client()
    if client.set(BROKER_EPOCH_KEY, secrets.token_hex(8), nx=True):
        result = session.execute(update(Job).where(Job.status == "queued").values(enqueued_at=None))
        if result.rowcount:
            log.warning("broker state is new (first start or Redis restart): resending %d queued jobs", result.rowcount)


def _expire_leases(session: Session, now: datetime) -> list[str]:
    """Requeue, fail or cancel running jobs whose worker stopped heartbeating; returns the ones that ended."""
    ended = []
    expired = session.execute(
        select(Job.id, Job.status, Job.attempts, Job.lease_expires_at).where(
            Job.status.in_(("running", "cancelling")), Job.lease_expires_at < now
        )
    ).all()
    for job_id, status, attempts, lease in expired:
        values: dict = {"worker": None, "lease_expires_at": None, "eta_seconds": None}
        if status == "cancelling":
            values.update(status="cancelled", finished_at=now)
        elif attempts >= settings.max_attempts:
            values.update(
                status="failed",
                finished_at=now,
                error_type="worker_lost",
                error_message=(
                    f"the worker running this job stopped responding on each of {attempts} attempts (killed, out of "
                    "host memory, or the machine went away); see the worker logs, or lower the job's memory needs"
                ),
            )
        else:
            values.update(status="queued", enqueued_at=None)
        won = session.execute(
            update(Job).where(Job.id == job_id, Job.status == status, Job.lease_expires_at == lease).values(**values)
        )
        if won.rowcount:
            log.warning("job %s: worker lease expired while %s -> %s", job_id, status, values["status"])
            events.publish(job_id, "status", {"status": values["status"], "reason": "worker lease expired"})
            if values["status"] != "queued":
                ended.append(job_id)
    return ended


def _resend_unsent(session: Session) -> int:
    """Send queued jobs the broker does not have, in the order their queues hand them out, for at most
    RESEND_SECONDS a sweep: a sweep stays short, and a backlog (every queued job, after a Redis restart) drains over
    the next sweeps, still far faster than workers can take jobs. A few failed sends in a row end the sweep (the
    broker is down: the next sweep tries again); one job that fails alone does not hold back the others.

    Each job's route comes from its row (queue and priority, as at submission); only a job recorded before jobs
    kept their queue is looked up alone. Sent jobs are marked in one UPDATE per few hundred."""
    unsent = session.execute(
        select(Job.id, Job.queue, Job.priority)
        .where(Job.status == "queued", Job.enqueued_at.is_(None))
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(RESEND_ROWS)
    ).all()
    deadline, sent, failed_in_a_row = time.monotonic() + RESEND_SECONDS, [], 0
    for job_id, queue, priority in unsent:
        if time.monotonic() >= deadline or failed_in_a_row >= GIVE_UP_AFTER_FAILURES:
            break
        if enqueue_training(job_id, (queue, priority) if queue else None):
            sent.append(job_id)
            failed_in_a_row = 0
        else:
            failed_in_a_row += 1
    for i in range(0, len(sent), IN_CHUNK):
        session.execute(
            update(Job).where(Job.id.in_(sent[i : i + IN_CHUNK]), Job.status == "queued").values(enqueued_at=utcnow()),
            execution_options={"synchronize_session": False},
        )
    return len(sent)


def reconcile_once(make_session: sessionmaker) -> None:
    with make_session() as session:
        _broker_was_reset(session)
        ended = _expire_leases(session, utcnow())
        session.commit()
        for job_id in ended:
            notify_job_finished(job_id, session)  # their workers are gone and cannot send the webhook
        _resend_unsent(session)
        session.commit()


def reconciler(make_session: sessionmaker, interval: float) -> PeriodicLoop:
    """The loop calling reconcile_once every FT_RECONCILE_EVERY_SECONDS."""
    return PeriodicLoop("reconciler", interval, lambda: reconcile_once(make_session))

"""Keeps the SQL record and the broker in step, so no job is lost or left `running` forever.

Runs in every API process (a thread), safe with many replicas: each change is a compare-and-set.
- A running job whose worker stopped heartbeating (killed, host gone) is requeued, or failed after
  FT_MAX_ATTEMPTS tries; a `cancelling` one becomes `cancelled`.
- A queued job whose message never reached the broker, or was lost with a Redis restart, is re-sent.
"""

import logging
import secrets
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
    sent = 0
    for job_id in session.scalars(select(Job.id).where(Job.status == "queued", Job.enqueued_at.is_(None))):
        if enqueue_training(job_id):
            session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(enqueued_at=utcnow()))
            sent += 1
    return sent


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

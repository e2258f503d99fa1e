"""How an attempt ends in the record: one outcome, written only while the job is still this worker's.

Each write rides out a short database outage under the attempt's lease (worker/lease.py) and is a compare-and-set
on the job's worker: an attempt whose lease went elsewhere (requeued after an outage longer than the lease, or
given to another worker) records nothing, and leaves the files the next attempt resumes from alone.
"""

import contextlib
import logging
import shutil

from sqlalchemy.orm import Session

from app import storage
from app.broker.queue import enqueue_training
from app.core.db import session_scope
from worker import record
from worker.lease import LeaseLost, database_away, ride_out
from worker.report import JobReporter
from worker.resume import discard_resumable

log = logging.getLogger(__name__)


def finish(job_id: str, reporter: JobReporter, status: str, error: tuple[str, str] | None = None) -> str:
    """Record the attempt's end (succeeded, failed, cancelled) and announce it; returns what became of it."""
    reporter.release()  # every point stored, no more renewals: the outcome is recorded next

    def write(session: Session) -> tuple[bool, bool]:
        nonlocal status, error
        if status == "failed" and record.job_status(session, job_id) == "cancelling":
            status, error = "cancelled", None
        recorded = record.finish_job(session, job_id, status, error, worker=reporter.worker)
        return recorded, record.discard_deleted_outputs(session, job_id)

    recorded, discard = ride_out(reporter.lease, f"recording the outcome ({status})", write)
    if not recorded and not discard:
        log.warning("job %s: no longer this worker's when it ended %s: nothing recorded", job_id, status)
        return "lease lost"
    # Resumable state (optimizer, RNG) is only useful until the job ends; packed checkpoints stay.
    discard_resumable(job_id, storage.job_dir(job_id) / "trainer")
    if discard:  # deleted while it ran (DELETE /jobs/{id}): what this attempt wrote since goes too
        remove_outputs(job_id)
        if not job_exists(job_id):
            log.info("job %s: deleted while it ran; its files are removed", job_id)
            return "deleted"
    reporter.status(status, **({"error": {"type": error[0], "message": error[1]}} if error else {}))
    log.info("job %s: %s", job_id, status)
    return status


def requeue(job_id: str, reporter: JobReporter, reason: str) -> str:
    """Back to `queued` for another attempt (a drained worker, a smaller micro-batch after running out of memory)."""
    reporter.release()
    requeued = ride_out(
        reporter.lease, "requeueing the job", lambda s: record.requeue_job(s, job_id, worker=reporter.worker)
    )
    if not requeued:
        log.warning("job %s: no longer this worker's when it was to be requeued (%s)", job_id, reason)
        return "lease lost"
    reporter.status("queued", reason=reason)
    if enqueue_training(job_id):
        with contextlib.suppress(LeaseLost):  # unmarked, the reconciler sends it again; the claim refuses a twin
            ride_out(reporter.lease, "marking the job sent", lambda s: record.mark_enqueued(s, job_id))
    return "requeued"


def lease_lost(job_id: str, reporter: JobReporter, reason: BaseException) -> str:
    """The attempt stops without recording anything: the job is another attempt's now, or it was deleted."""
    reporter.release()
    if reporter.lease.lost and not job_exists(job_id):  # deleted while it ran: its files go too
        remove_outputs(job_id)
        log.info("job %s: deleted while it ran; its files are removed", job_id)
        return "deleted"
    log.warning("%s; this attempt records nothing", reason)  # the reason names the job
    return "lease lost"


def remove_outputs(job_id: str) -> None:
    storage.remove(storage.job_prefix(job_id))
    shutil.rmtree(storage.job_dir(job_id), ignore_errors=True)


def job_exists(job_id: str) -> bool:
    """Whether the job's row is still there; True when the database cannot say (never delete on a guess)."""
    try:
        with session_scope() as session:
            return record.job_status(session, job_id) is not None
    except Exception as exc:
        if database_away(exc):
            return True
        raise

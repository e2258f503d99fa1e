"""This worker's hold on its running job, and SQL work that rides out a short database outage inside it.

The lease in SQL (`jobs.lease_expires_at`) is what the reconciler reads; `Lease` is the worker's own view of it:
when it last renewed it, so how long it may go on without the database. While PostgreSQL is away the worker keeps
training and retries its writes with backoff (`ride_out`); the first renewal once it is back extends the same
lease (the row still names this worker). A worker that has gone `RIDE_OUT_SHARE` of the lease without renewing
stops: by then the reconciler may have given the job to another worker, and two copies must never train one job.
It stops a little before the record's expiry, so it is stopped by the time the reconciler could act.
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.db import session_scope
from worker import record

log = logging.getLogger(__name__)
T = TypeVar("T")
RIDE_OUT_SHARE = 0.9  # of FT_LEASE_SECONDS: the worker gives up this much into the lease, the record at all of it
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 2.0  # backoff cap (a tenth of a shorter lease): a renewal follows the database's return this soon


class LeaseLost(Exception):
    """The job is no longer this worker's (requeued, given to another worker, or deleted): stop, record nothing."""


class LeaseExpired(LeaseLost):
    """The database stayed away for most of the lease: this copy stops; the job resumes from its last checkpoint."""


def database_away(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached (refused, dropped, restarting), not that a query was bad."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Lease:
    """The worker's view of its lease on `job_id`: renewed (or claimed) at `renewed_at` on its monotonic clock."""

    def __init__(self, job_id: str, worker: str):
        self.job_id = job_id
        self.worker = worker
        self.seconds = settings.lease_seconds
        self.renewed_at = time.monotonic()  # made just after the claim, which set the record's expiry
        self.lost = False  # the record said the job is not ours; `expired()` covers a database that did not answer

    def renewed(self, asked_at: float) -> None:
        """A renewal sent at `asked_at` committed: the record's expiry is at least asked_at + seconds."""
        self.renewed_at = max(self.renewed_at, asked_at)

    def deadline(self) -> float:
        return self.renewed_at + RIDE_OUT_SHARE * self.seconds

    def expired(self) -> bool:
        return time.monotonic() > self.deadline()

    def check(self) -> None:
        """Raise when this copy must stop (what the training thread calls before it records anything)."""
        if self.lost:
            raise LeaseLost(f"job {self.job_id}: the job is no longer this worker's")
        if self.expired():
            raise LeaseExpired(
                f"job {self.job_id}: the database has been unreachable for {self.unrenewed_s():.0f} s, most of the "
                f"{self.seconds:.0f} s lease; stopping this copy (the job resumes from its last checkpoint)"
            )

    def unrenewed_s(self) -> float:
        return time.monotonic() - self.renewed_at


class Backoff:
    """Exponential delays (FIRST_RETRY_S doubling to MAX_RETRY_S), never past the lease's deadline."""

    def __init__(self, lease: Lease):
        self.lease = lease
        self.delay = FIRST_RETRY_S

    def next_delay(self) -> float:
        delay = min(self.delay, max(0.05, self.lease.deadline() - time.monotonic()))
        self.delay = min(self.delay * 2, MAX_RETRY_S, self.lease.seconds / 10)
        return delay

    def reset(self) -> None:
        self.delay = FIRST_RETRY_S


def ride_out(lease: Lease, what: str, work: Callable[[Session], T]) -> T:
    """Run `work` in one transaction, retried while the database is away and the lease still holds.

    `work` must be safe to run again (a commit whose answer was lost is retried): every worker write is a
    compare-and-set or an insert that ignores duplicates. Raises LeaseExpired once the lease runs out.
    """
    backoff, warned = Backoff(lease), False
    while True:
        lease.check()
        try:
            with session_scope() as session:
                return work(session)
        except Exception as exc:
            if not database_away(exc):
                raise
            if not warned:
                log.warning(
                    "job %s: database unreachable while %s (%s); retrying for up to %.0f s more",
                    lease.job_id,
                    what,
                    type(exc).__name__,
                    max(0.0, lease.deadline() - time.monotonic()),
                )
                warned = True
            time.sleep(backoff.next_delay())
            if lease.expired():
                raise LeaseExpired(
                    f"job {lease.job_id}: the database stayed unreachable while {what} for most of the "
                    f"{lease.seconds:.0f} s lease; stopping this copy (the job resumes from its last checkpoint)"
                ) from exc


def renew_and(lease: Lease, work: Callable[[Session], T] | None = None) -> Callable[[Session], T | None]:
    """A transaction that first renews the lease (a row lock on PostgreSQL: the reconciler cannot take the job
    while it runs), then does `work`; marks the lease lost, writing nothing, when the job is no longer ours."""

    def transaction(session: Session) -> T | None:
        asked_at = time.monotonic()
        if not record.renew_lease(session, lease.job_id, lease.worker):
            lease.lost = True
            session.rollback()
            raise LeaseLost(f"job {lease.job_id}: the job is no longer this worker's")
        result = work(session) if work is not None else None
        session.commit()
        lease.renewed(asked_at)
        return result

    return transaction

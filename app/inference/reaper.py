"""Liveness of work on the inference queue: exports and on-demand evaluations whose worker died end `failed`.

A worker heartbeats the row it runs (`heartbeat`, a thread writing `heartbeat_at` every FT_HEARTBEAT_SECONDS).
The API's reconciler loop calls `reap_once`: a `running` row whose heartbeat is older than
FT_INFERENCE_STALE_AFTER_S is failed with an error saying so. Unlike training jobs these are not requeued: they are
quick to ask for again, and one that killed its worker (out of memory) would only kill the next one.
"""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import settings
from app.core.loops import PeriodicLoop
from app.models import Evaluation, Export, utcnow

log = logging.getLogger(__name__)
WATCHED = (
    (Export, "export", "POST /jobs/{job_id}/exports"),
    (Evaluation, "evaluation", "POST /jobs/{job_id}/evaluations"),
)


def _stale_error(what: str, retry: str, job_id: str) -> str:
    return (
        f"the worker running this {what} stopped responding for over {settings.inference_stale_after_s:g}s "
        f"(killed, out of memory, or its machine went away); see the worker log, then ask again with "
        f"{retry.format(job_id=job_id)}"
    )


def reap_stale(session: Session, now: datetime) -> list[str]:
    """Fail every running export and evaluation whose heartbeat is stale; returns their ids (the caller commits)."""
    cutoff = now - timedelta(seconds=settings.inference_stale_after_s)
    reaped = []
    for model, what, retry in WATCHED:
        last_sign = func.coalesce(model.heartbeat_at, model.started_at, model.created_at)
        stale = session.execute(
            select(model.id, model.job_id).where(model.status == "running", last_sign < cutoff)
        ).all()
        for row_id, job_id in stale:
            won = session.execute(
                update(model)
                .where(model.id == row_id, model.status == "running", last_sign < cutoff)
                .values(status="failed", finished_at=now, error_message=_stale_error(what, retry, job_id))
            )
            if won.rowcount:  # another API replica may have reaped it first
                log.warning("%s %s of job %s: worker heartbeat stale, marked failed", what, row_id, job_id)
                reaped.append(row_id)
    return reaped


def reap_once(make_session: sessionmaker) -> list[str]:
    """One sweep in its own transaction (called from the reconciler's loop)."""
    with make_session() as session:
        reaped = reap_stale(session, utcnow())
        session.commit()
    return reaped


def reaper(make_session: sessionmaker, interval: float) -> PeriodicLoop:
    """The loop calling reap_once at the reconciler's pace (FT_RECONCILE_EVERY_SECONDS)."""
    return PeriodicLoop("reaper", interval, lambda: reap_once(make_session))


def beat(make_session: sessionmaker, model: type[Export] | type[Evaluation], row_id: str) -> None:
    """Record that the worker running this row is alive."""
    with make_session() as session:
        session.execute(
            update(model).where(model.id == row_id, model.status == "running").values(heartbeat_at=utcnow())
        )
        session.commit()


@contextmanager
def heartbeat(make_session: sessionmaker, model: type[Export] | type[Evaluation], row_id: str) -> Iterator[None]:
    """The worker side: beat every FT_HEARTBEAT_SECONDS from a thread while the block runs."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(settings.heartbeat_seconds):
            try:
                beat(make_session, model, row_id)
            except Exception as exc:  # the database is briefly away: the next beat may get through
                log.warning("heartbeat of %s failed (%s: %s)", row_id, type(exc).__name__, exc)

    thread = threading.Thread(target=run, name=f"heartbeat-{row_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)

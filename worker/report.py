"""JobReporter: the recipe's Report for a real job, and the keeper of the job's lease.

Points go to SQL (the record) from a background thread that renews the lease in the same transaction; live events
go to the job's Redis stream from another (worker/outbox.py). So reporting never stalls a training step, and a short
outage of PostgreSQL or Redis is ridden out: while the database is away the points wait in memory (at most
MAX_BUFFERED_POINTS) and the thread retries with backoff; the first write once it is back renews the lease and
stores every waiting point, in order, in one transaction (a step already stored is ignored, so a write retried after
a lost reply never duplicates one). Past most of the lease without a renewal (worker/lease.py), or with the buffer
full, `should_stop()` turns true and the attempt ends recording nothing: the reconciler requeues the job and the next
attempt resumes from its last checkpoint.
"""

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from app import storage
from app.broker import events
from app.core.config import settings
from app.core.db import session_scope
from worker import record
from worker.artifacts import pack_directory
from worker.drain import is_draining
from worker.lease import Backoff, Lease, LeaseLost, database_away, renew_and, ride_out
from worker.outbox import EventOutbox
from worker.resume import save_resumable

log = logging.getLogger(__name__)
FLUSH_EVERY_S = 0.5
STATUS_POLL_EVERY_S = 5.0  # Redis away: how often the cancel flag is read from SQL instead (and Redis tried again)
MAX_BUFFERED_POINTS = 10_000  # points waiting through a database outage (~1 KB each); more ends the attempt
CLOSE_DRAIN_S = 2.0  # close() waits this long for Redis; end() a little longer (worker/outbox.py)
CHECKPOINT_FILES = ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "labels.json")
Item = tuple[str, Any]  # ("train" | "eval", point), or ("flush" | "release", threading.Event)


class JobReporter:
    def __init__(self, job_id: str, worker: str):
        self.job_id = job_id
        self.worker = worker
        self.lease = Lease(job_id, worker)
        self.events = EventOutbox(job_id)
        self._queue: queue.Queue[Item] = queue.Queue()
        self._stop_requested = False
        self._overflowed = False
        self._redis_retry_at = 0.0
        self._away_since: float | None = None
        self._expiry_logged = False
        self._thread = threading.Thread(target=self._write_loop, name=f"report-{job_id}", daemon=True)
        self._thread.start()

    @property
    def lease_lost(self) -> bool:
        """This copy must stop: the job is not ours any more, or may not be (the database was away too long)."""
        return self.lease.lost or self._overflowed or self.lease.expired()

    def lease_error(self) -> LeaseLost:
        """Why this copy must stop (when `lease_lost`), as the exception that says so."""
        try:
            self.lease.check()
        except LeaseLost as exc:
            return exc
        return LeaseLost(
            f"job {self.job_id}: more than {MAX_BUFFERED_POINTS} points waited for the database; stopping this copy"
        )

    # --- the Report protocol (called on the training thread; must stay cheap) ---
    def parameters(self, trainable: int, total: int) -> None:
        ride_out(
            self.lease,
            "recording the parameter counts",
            lambda session: record.set_parameters(session, self.job_id, trainable, total),
        )

    def train_point(self, point: dict[str, Any]) -> None:
        self._queue.put(("train", point))
        self.events.add("metric", point)

    def eval_point(self, point: dict[str, Any]) -> None:
        self._queue.put(("eval", point))
        self.events.add("eval", point)

    def warning(self, message: str) -> None:
        log.warning("job %s: %s", self.job_id, message)
        self.events.add("warning", {"message": message})

    def should_stop(self) -> bool:
        if self._stop_requested or self.lease_lost:
            return True
        now = time.monotonic()
        if now >= self._redis_retry_at:
            try:
                self._stop_requested = bool(events.redis_client().exists(events.cancel_key(self.job_id)))
                return self._stop_requested
            except Exception:  # Redis away: read the SQL record instead, and leave Redis be for a while
                self._redis_retry_at = now + STATUS_POLL_EVERY_S
                self._poll_cancel_in_sql()
        return self._stop_requested

    def should_drain(self) -> bool:
        return is_draining()

    def checkpoint(self, step: int, path: Path) -> None:
        """Pack the checkpoint's adapter for download and record it; its optimizer state stays for resuming
        (and, once recorded, goes to the object store too, for a resume on another machine: worker/resume.py).
        Recorded only while the lease holds, waiting out a short database outage (training waits with it), and
        only after the points up to it: an attempt that resumes from it finds its curve whole up to that step."""
        dest = storage.job_dir(self.job_id) / "checkpoints" / f"checkpoint-{step}.tar.gz"
        size, sha = pack_directory(path, dest, only=CHECKPOINT_FILES)
        storage.publish(dest)  # S3: retried through an outage of the endpoint (app/storage/s3.py)
        self._wait_stored()
        fields = {"kind": "checkpoint", "step": step, "path": storage.relative(dest), "size_bytes": size, "sha256": sha}
        ride_out(
            self.lease,
            f"recording checkpoint {step}",
            renew_and(self.lease, lambda s: record.add_artifact(s, self.job_id, name=f"checkpoint-{step}", **fields)),
        )
        save_resumable(self.job_id, step, path)
        self.events.add("checkpoint", {"step": step, "name": f"checkpoint-{step}"})

    # --- lifecycle ---
    def status(self, status: str, **info: Any) -> None:
        self.events.add("status", {"status": status, **info})

    def close(self) -> None:
        """Return once everything reported so far is stored: every point in SQL (unless the lease is lost: see
        `lease_lost`), every event sent (waiting a few seconds for an absent Redis). The lease is still renewed
        until `release()`: the adapter is saved and uploaded, and the outcome recorded, under it."""
        self._wait_stored()
        self.events.drain(CLOSE_DRAIN_S)

    def release(self) -> None:
        """Store what is queued, then stop renewing the lease: the attempt's outcome is about to be recorded."""
        if self._thread.is_alive():
            self._queue.put(("release", threading.Event()))
            self._thread.join()

    def end(self) -> None:
        """The attempt is over: release the lease, send the last events, stop the threads."""
        self.release()
        self.events.close()

    def _wait_stored(self) -> None:
        """Until every point queued so far is in SQL, or can no longer be (the lease is lost)."""
        done = threading.Event()
        self._queue.put(("flush", done))
        while not done.wait(0.5) and self._thread.is_alive():
            pass

    def _poll_cancel_in_sql(self) -> None:
        try:
            with session_scope() as session:
                self._stop_requested = record.job_status(session, self.job_id) == "cancelling"
        except Exception as exc:
            if not database_away(exc):
                raise  # both away: keep training on what we knew

    def _take(self, points: list[Item], waiting: list[threading.Event]) -> bool:
        """Move what is queued into `points` and `waiting`; True when a release was asked for."""
        try:
            item = self._queue.get(timeout=min(FLUSH_EVERY_S, settings.heartbeat_seconds))
        except queue.Empty:
            return False
        releasing = False
        while True:
            kind, payload = item
            if kind in ("flush", "release"):
                waiting.append(payload)
                releasing |= kind == "release"
            else:
                points.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        if len(points) > MAX_BUFFERED_POINTS and not self._overflowed:
            log.error(
                "job %s: %d points waiting for the database, more than the buffer holds", self.job_id, len(points)
            )
            self._overflowed = True
        return releasing

    def _write_loop(self) -> None:
        points: list[Item] = []
        waiting: list[threading.Event] = []
        backoff, retry_at, last_beat, releasing = Backoff(self.lease), 0.0, time.monotonic(), False
        while True:
            releasing |= self._take(points, waiting)
            now = time.monotonic()
            if self.lease_lost:
                if not (self.lease.lost or self._expiry_logged):
                    log.error("job %s: %s; %d points not stored", self.job_id, _expiry_message(self.lease), len(points))
                    self._expiry_logged = True
                points.clear()  # not ours to record any more
            elif points or waiting or now - last_beat >= settings.heartbeat_seconds:
                if now < retry_at:
                    continue
                if not self._store(points):
                    retry_at = now + backoff.next_delay()
                    continue
                points.clear()
                last_beat, retry_at = now, 0.0
                backoff.reset()
            for done in waiting:
                done.set()
            waiting.clear()
            if releasing:
                return

    def _store(self, points: list[Item]) -> bool:
        """Renew the lease and store the points in one transaction; False to try again later (database away)."""
        asked_at = time.monotonic()
        try:
            with session_scope() as session:
                if not record.renew_lease(session, self.job_id, self.worker):
                    # The reconciler gave the job to another worker (our heartbeat stalled): stop, record nothing.
                    log.error("job %s: lease lost to another worker; stopping this copy", self.job_id)
                    self.lease.lost = True
                    session.rollback()
                    return True
                record.store_points(session, self.job_id, points)
        except Exception as exc:
            if not database_away(exc):
                log.exception("job %s: could not store %d points", self.job_id, len(points))
                points.clear()  # a point the database refuses must not wedge the reporter
                return True
            if self._away_since is None:
                self._away_since = asked_at
                log.warning("job %s: database unreachable (%s): buffering points", self.job_id, type(exc).__name__)
            return False
        self.lease.renewed(asked_at)
        if self._away_since is not None:
            log.info(
                "job %s: database back after %.1f s: lease renewed, %d points stored",
                self.job_id,
                time.monotonic() - self._away_since,
                len(points),
            )
            self._away_since = None
        return True


def _expiry_message(lease: Lease) -> str:
    return (
        f"no lease renewal for {lease.unrenewed_s():.0f} s of the {lease.seconds:.0f} s lease (database unreachable): "
        "stopping this copy; the job resumes from its last checkpoint"
    )

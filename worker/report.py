"""JobReporter: the recipe's Report for a real job. Points go to SQL (the record) and to the job's
Redis stream (live events) from a background thread, so reporting never stalls a training step."""

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
from worker.resume import save_resumable

log = logging.getLogger(__name__)
FLUSH_EVERY_S = 0.5
STATUS_POLL_EVERY_S = 5.0
CHECKPOINT_FILES = ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "labels.json")


class JobReporter:
    def __init__(self, job_id: str, worker: str):
        self.job_id = job_id
        self.worker = worker
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name=f"report-{job_id}", daemon=True)
        self._stop_requested = False
        self.lease_lost = False
        self._last_status_poll = 0.0
        self._thread.start()

    # --- the Report protocol (called on the training thread; must stay cheap) ---
    def parameters(self, trainable: int, total: int) -> None:
        with session_scope() as session:
            record.set_parameters(session, self.job_id, trainable, total)

    def train_point(self, point: dict[str, Any]) -> None:
        self._queue.put(("train", point))

    def eval_point(self, point: dict[str, Any]) -> None:
        self._queue.put(("eval", point))

    def warning(self, message: str) -> None:
        log.warning("job %s: %s", self.job_id, message)
        self._publish("warning", {"message": message})

    def should_stop(self) -> bool:
        if self._stop_requested or self.lease_lost:
            return True
        try:
            self._stop_requested = bool(events.redis_client().exists(events.cancel_key(self.job_id)))
        except Exception:  # Redis down: fall back to the SQL record, less often
            now = time.monotonic()
            if now - self._last_status_poll > STATUS_POLL_EVERY_S:
                self._last_status_poll = now
                with session_scope() as session:
                    self._stop_requested = record.job_status(session, self.job_id) == "cancelling"
        return self._stop_requested

    def should_drain(self) -> bool:
        return is_draining()

    def checkpoint(self, step: int, path: Path) -> None:
        """Pack the checkpoint's adapter for download and record it; its optimizer state stays for resuming
        (and, once recorded, goes to the object store too, for a resume on another machine: worker/resume.py)."""
        dest = storage.job_dir(self.job_id) / "checkpoints" / f"checkpoint-{step}.tar.gz"
        size, sha = pack_directory(path, dest, only=CHECKPOINT_FILES)
        storage.publish(dest)
        with session_scope() as session:
            record.add_artifact(
                session,
                self.job_id,
                name=f"checkpoint-{step}",
                kind="checkpoint",
                step=step,
                path=storage.relative(dest),
                size_bytes=size,
                sha256=sha,
            )
        save_resumable(self.job_id, step, path)
        self._publish("checkpoint", {"step": step, "name": f"checkpoint-{step}"})

    # --- lifecycle ---
    def status(self, status: str, **info: Any) -> None:
        self._publish("status", {"status": status, **info})

    def close(self) -> None:
        """Write everything still queued; called before the job's final status is recorded."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        try:
            events.publish(self.job_id, kind, data)
        except Exception as exc:  # live events are best effort; SQL keeps the record
            log.warning("job %s: could not publish %s event: %s", self.job_id, kind, exc)

    def _write_loop(self) -> None:
        last_beat = time.monotonic()
        done = False
        while not done:
            batch: list[tuple[str, dict[str, Any]]] = []
            try:
                item = self._queue.get(timeout=min(FLUSH_EVERY_S, settings.heartbeat_seconds))
                while True:
                    if item is None:
                        done = True
                        break
                    batch.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            beat = time.monotonic() - last_beat > settings.heartbeat_seconds
            if batch or beat:
                self._write(batch, beat)
                last_beat = time.monotonic() if beat else last_beat

    def _write(self, batch: list[tuple[str, dict[str, Any]]], beat: bool) -> None:
        try:
            with session_scope() as session:
                record.store_points(session, self.job_id, batch)
                if not record.renew_lease(session, self.job_id, self.worker):
                    # The reconciler gave the job to another worker (our heartbeat stalled): stop, record nothing.
                    log.error("job %s: lease lost to another worker; stopping this copy", self.job_id)
                    self.lease_lost = True
        except Exception:
            log.exception("job %s: could not store %d points", self.job_id, len(batch))
        for split, point in batch:
            self._publish("metric" if split == "train" else "eval", point)

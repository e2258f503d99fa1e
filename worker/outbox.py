"""A job's live events on their way to its Redis stream: buffered while Redis is away, then sent in order, once.

Events (status, metric, eval, checkpoint, warning) are queued by the training thread and sent by a thread of their
own, so neither a training step nor the SQL heartbeat ever waits on Redis. Each batch goes in one MULTI/EXEC with
a counter of what this outbox has sent (`ft:job:<id>:sent:<token>`, one per outbox): after an error that leaves it
unclear whether the batch landed (the reply was lost), the counter says, so a retry never adds an event twice.
A Redis restarted without persistence has lost the counter with the stream, and gets the batch again. At most
MAX_BUFFERED_EVENTS wait; past that the oldest are dropped (SQL keeps the metric record; the stream is for watching
live).
"""

import collections
import logging
import secrets
import threading
import time
from typing import Any

from app.broker import events

log = logging.getLogger(__name__)
MAX_BUFFERED_EVENTS = 10_000
EVENTS_PER_BATCH = 500
FIRST_RETRY_S, MAX_RETRY_S = 0.25, 2.0
CLOSE_GRACE_S = 10.0  # how long a closing outbox waits for Redis before dropping what is left
SENT_KEY_TTL_S = 24 * 3600


class EventOutbox:
    """In-order, exactly-once delivery of one reporter's events to the job's stream."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self._sent_key = f"ft:job:{job_id}:sent:{secrets.token_hex(6)}"
        self._pending: collections.deque[tuple[int, str, dict[str, Any]]] = collections.deque()
        self._next_seq = 1
        self._unsure = False  # the last batch failed after it may have reached Redis: ask the counter first
        self._dropped = 0
        self._closing_at: float | None = None
        self._grace_s = CLOSE_GRACE_S
        self._stopped = False
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # notified when events are queued, or the outbox closes
        self._sent = threading.Condition(lock)  # notified when events leave the queue
        self._thread = threading.Thread(target=self._run, name=f"events-{job_id}", daemon=True)
        self._thread.start()

    def add(self, kind: str, data: dict[str, Any]) -> None:
        """Queue one event (cheap: the training thread calls this at every step)."""
        with self._cond:
            if self._stopped:
                self._send_now(kind, data)
                return
            if len(self._pending) >= MAX_BUFFERED_EVENTS:
                self._pending.popleft()
                self._dropped += 1
                if self._dropped == 1:
                    log.warning("job %s: Redis away and %d events waiting: dropping the oldest", self.job_id, len(self))
            self._pending.append((self._next_seq, kind, data))
            self._next_seq += 1
            self._cond.notify()

    def __len__(self) -> int:
        return len(self._pending)

    def drain(self, timeout_s: float = CLOSE_GRACE_S) -> bool:
        """Wait until every queued event is sent (True), or timeout_s passed with Redis still away (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._sent.wait(min(left, 0.5))
        return True

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Send what is queued, waiting up to grace_s for an absent Redis, then stop."""
        with self._cond:
            self._closing_at, self._grace_s = time.monotonic(), grace_s
            self._cond.notify()
        self._thread.join(grace_s + 5)

    def _send_now(self, kind: str, data: dict[str, Any]) -> None:
        try:  # after close (the job's last status): one try, best effort
            events.publish(self.job_id, kind, data)
        except Exception as exc:
            log.warning("job %s: could not publish %s event: %s", self.job_id, kind, exc)

    def _run(self) -> None:
        delay, failing_since = FIRST_RETRY_S, None
        while True:
            with self._cond:
                while not self._pending and self._closing_at is None:
                    self._cond.wait()
                if not self._pending:
                    self._stopped = True
                    return
                batch = list(self._pending)[:EVENTS_PER_BATCH]
            try:
                self._send(batch)
            except Exception as exc:  # Redis away (refused, reset, timed out): keep the batch, try again
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("job %s: Redis unreachable (%s): buffering live events", self.job_id, exc)
                self._unsure = True
                if self._give_up():
                    return
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            if failing_since is not None:
                log.info("job %s: Redis back after %.1f s: events sent", self.job_id, time.monotonic() - failing_since)
            delay, failing_since = FIRST_RETRY_S, None

    def _send(self, batch: list[tuple[int, str, dict[str, Any]]]) -> None:
        client = events.redis_client()
        if self._unsure:  # the previous try may have landed: skip what the counter says was sent
            done = int(client.get(self._sent_key) or 0)
            batch = [item for item in batch if item[0] > done]
            self._forget(done)
            self._unsure = False
        if batch:
            pipe = client.pipeline(transaction=True)
            for _, kind, data in batch:
                events.publish(self.job_id, kind, data, client=pipe)
            pipe.set(self._sent_key, batch[-1][0], ex=SENT_KEY_TTL_S)
            pipe.execute()
            self._forget(batch[-1][0])

    def _forget(self, up_to_seq: int) -> None:
        with self._cond:
            while self._pending and self._pending[0][0] <= up_to_seq:
                self._pending.popleft()
            self._sent.notify_all()

    def _give_up(self) -> bool:
        with self._cond:
            if self._closing_at is None or time.monotonic() - self._closing_at < self._grace_s:
                return False
            log.warning(
                "job %s: Redis still unreachable at the job's end: %d live events dropped (SQL has the record)",
                self.job_id,
                len(self._pending),
            )
            self._pending.clear()
            self._stopped = True
            return True

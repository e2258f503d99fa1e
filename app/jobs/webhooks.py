"""Webhooks: a job's `webhook_url` hears when the job ends, signed with HMAC-SHA256 and retried with backoff.

Whoever ends a job (a worker, or the API cancelling a queued job) only adds the delivery to an outbox
in Redis, which costs one round trip and never waits on the receiver. A thread in each API process
delivers what is due: a delivery is leased atomically (so replicas never send one twice at once),
retried with exponential backoff on network errors, 408, 429 and 5xx, and dropped on other 4xx.
Receivers check `X-FT-Signature: sha256=<hex>`, the HMAC of `<X-FT-Timestamp>.<body>` under
FT_WEBHOOK_SECRET (see `verify_signature`).
"""

import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

import httpx
import redis
from prometheus_client import Counter
from sqlalchemy.orm import Session

from app.broker import events
from app.core.config import settings
from app.core.db import SessionLocal
from app.core.loops import PeriodicLoop
from app.jobs.schemas import JobPublic
from app.models import TERMINAL_STATUSES, Job, utcnow

log = logging.getLogger(__name__)
LEASE_S = 60  # a delivery claimed by a process that then died is retried after this long
RETRYABLE = {408, 425, 429}
DELIVERIES = Counter("ft_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"])

# Claim the due deliveries atomically: push their due time one lease ahead and return them.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, body: bytes, timestamp: str, signature: str, tolerance_s: float = 300) -> bool:
    """What a receiver runs: the signature matches and the timestamp is recent (no replays)."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def default_prefix() -> str:
    # Named after the training queue, as Celery's own keys are: deployments sharing one Redis keep apart.
    return f"ft:webhooks:{settings.training_queue}"


class Outbox:
    """Pending deliveries in Redis: a sorted set of ids by due time, and a hash of their contents."""

    def __init__(self, client: redis.Redis, prefix: str | None = None):
        prefix = prefix or default_prefix()
        self.client = client
        self.due_key, self.body_key, self.prefix = f"{prefix}:due", f"{prefix}:deliveries", prefix
        self._claim = client.register_script(_CLAIM)

    def add(self, url: str, event: str, payload: dict[str, Any], dedupe: str | None = None) -> str | None:
        """Queue one delivery; with `dedupe`, a second add of the same key within a week is ignored."""
        if dedupe and not self.client.set(f"{self.prefix}:sent:{dedupe}", "1", nx=True, ex=7 * 24 * 3600):
            return None
        delivery_id = f"whd_{secrets.token_hex(12)}"
        body = {"id": delivery_id, "event": event, "created_at": utcnow().isoformat(), **payload}
        record = {"url": url, "event": event, "body": json.dumps(body, default=str), "attempts": 0}
        pipe = self.client.pipeline()
        pipe.hset(self.body_key, delivery_id, json.dumps(record))
        pipe.zadd(self.due_key, {delivery_id: time.time()})
        pipe.execute()
        return delivery_id

    def claim_due(self, limit: int = 20) -> list[tuple[str, dict[str, Any]]]:
        now = time.time()
        claimed = []
        for delivery_id in self._claim(keys=[self.due_key], args=[now, now + LEASE_S, limit]):
            raw = self.client.hget(self.body_key, delivery_id)
            if raw is None:
                self.client.zrem(self.due_key, delivery_id)
                continue
            claimed.append((delivery_id, json.loads(raw)))
        return claimed

    def done(self, delivery_id: str) -> None:
        pipe = self.client.pipeline()
        pipe.zrem(self.due_key, delivery_id)
        pipe.hdel(self.body_key, delivery_id)
        pipe.execute()

    def retry_later(self, delivery_id: str, record: dict[str, Any], delay_s: float) -> None:
        pipe = self.client.pipeline()
        pipe.hset(self.body_key, delivery_id, json.dumps(record))
        pipe.zadd(self.due_key, {delivery_id: time.time() + delay_s})
        pipe.execute()

    def pending(self) -> int:
        return int(self.client.zcard(self.due_key))


def backoff_s(attempt: int) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): doubling from FT_WEBHOOK_RETRY_BASE_S, capped at 10 min."""
    return min(settings.webhook_retry_base_s * 2 ** (attempt - 1), 600.0)


def _attempt(client: httpx.Client, delivery_id: str, record: dict[str, Any]) -> tuple[bool, bool, str]:
    """POST once; returns (delivered, worth_retrying, what happened)."""
    body = record["body"].encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "finetune-service-webhooks",
        "X-FT-Event": record["event"],
        "X-FT-Delivery": delivery_id,
        "X-FT-Timestamp": timestamp,
    }
    if settings.webhook_secret:
        headers["X-FT-Signature"] = sign(settings.webhook_secret, timestamp, body)
    try:
        response = client.post(record["url"], content=body, headers=headers)
    except httpx.HTTPError as exc:
        return False, True, f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return True, False, f"HTTP {response.status_code}"
    retry = response.status_code >= 500 or response.status_code in RETRYABLE
    return False, retry, f"HTTP {response.status_code}"


def deliver_due(outbox: Outbox, client: httpx.Client) -> int:
    """Try every due delivery once; returns how many were tried."""
    claimed = outbox.claim_due()
    for delivery_id, record in claimed:
        record["attempts"] += 1
        delivered, retry, what = _attempt(client, delivery_id, record)
        if delivered:
            DELIVERIES.labels("delivered").inc()
            outbox.done(delivery_id)
        elif retry and record["attempts"] < settings.webhook_max_attempts:
            DELIVERIES.labels("retried").inc()
            delay = backoff_s(record["attempts"])
            log.info("webhook %s to %s: %s; retry in %.0fs", delivery_id, record["url"], what, delay)
            outbox.retry_later(delivery_id, record, delay)
        else:
            DELIVERIES.labels("dropped").inc()
            log.warning(
                "webhook %s to %s dropped after %d attempt(s): %s", delivery_id, record["url"], record["attempts"], what
            )
            outbox.done(delivery_id)
    return len(claimed)


def notify_job_finished(job_id: str, session: Session | None = None, outbox: Outbox | None = None) -> str | None:
    """Queue the job's `job.<status>` webhook if it has ended and names a webhook_url; never raises.

    Safe to call more than once per job (a redelivered task, a replica): each outcome is sent once.
    """
    if session is None:
        with SessionLocal() as own_session:
            return notify_job_finished(job_id, own_session, outbox)
    try:
        job = session.get(Job, job_id)
        url = (job.spec or {}).get("webhook_url") if job is not None else None
        if not url or job.status not in TERMINAL_STATUSES:
            return None
        outbox = outbox or Outbox(events.redis_client())
        payload = {"job": JobPublic.of(job).model_dump(mode="json")}
        return outbox.add(url, f"job.{job.status}", payload, dedupe=f"{job.id}:{job.status}")
    except Exception:  # a webhook must never fail the job it reports on
        log.exception("job %s: could not queue its webhook", job_id)
        return None


class WebhookDeliverer(PeriodicLoop):
    """The loop in each API process sending due deliveries every `interval` seconds (Redis down: they wait)."""

    def __init__(self, interval: float = 1.0, outbox: Outbox | None = None):
        super().__init__("webhooks", interval, self._deliver)
        self.outbox = outbox
        self.client = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)

    def _deliver(self) -> None:
        self.outbox = self.outbox or Outbox(events.redis_client())
        deliver_due(self.outbox, self.client)

    def run(self) -> None:
        with self.client:
            super().run()

"""Webhooks: a job's `webhook_url` hears when the job ends, signed per Standard Webhooks and retried with backoff.

Whoever ends a job (a worker, or the API cancelling a queued job) only adds the delivery to an outbox
in Redis, which costs one round trip and never waits on the receiver. Redis is not a trust boundary, so an
outbox record holds ids only (job, event, delivery, attempts): the URL, the tenant, the payload and the
signing secret are read from SQL when the delivery is sent, and a record someone else wrote into Redis can
only re-send a real job's real webhook to that job's own URL.

Each API process sends what is due from a small pool (FT_WEBHOOK_SENDERS threads, at most
FT_WEBHOOK_SENDERS_PER_TENANT of them on one tenant's deliveries, so one tenant's slow receivers cannot hold
another's). A delivery is leased atomically (replicas never send one twice at once), goes through the egress
guard (app/core/egress.py: public addresses only, no redirects, FT_WEBHOOK_TIMEOUT_S over the whole call,
FT_WEBHOOK_MAX_RESPONSE_BYTES of the answer read), is retried with jittered exponential backoff on network
errors, 408, 425, 429 and 5xx, and dropped on other answers and on a refused address.
Each attempt is signed under the tenant's secret (POST /admin/tenants/{tenant}/webhook-secret), else
FT_WEBHOOK_SECRET, per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`), and with the
deprecated `X-FT-Signature` for one release: see app/jobs/webhook_signatures.py.
"""

import json
import logging
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import Counter
from sqlalchemy.orm import Session

from app.broker import events
from app.core import egress
from app.core.config import settings
from app.core.db import SessionLocal
from app.jobs.schemas import JobPublic
from app.jobs.webhook_signatures import sign, signature_headers, verify_signature  # noqa: F401 - sign, verify: moved
from app.models import TERMINAL_STATUSES, Job, utcnow
from app.tenants.secrets import WEBHOOK_SECRET, get_secret

log = logging.getLogger(__name__)
LEASE_S = 60  # a delivery claimed by a process that then died is retried after this long
RETRYABLE = {408, 425, 429}
MAX_BACKOFF_S = 600.0  # no retry waits longer than 10 minutes, however many came before it
DELIVERIES = Counter("ft_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"])

# Claim the due deliveries atomically: push their due time one lease ahead and return them.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


def default_prefix() -> str:
    # Named after the training queue, as Celery's own keys are: deployments sharing one Redis keep apart.
    return f"ft:webhooks:{settings.training_queue}"


def lease_s() -> float:
    """How long a claim holds: longer than any one POST may take, so a live sender never loses its lease."""
    return max(LEASE_S, 2 * settings.webhook_timeout_s)


class Outbox:
    """Pending deliveries in Redis: a sorted set of ids by due time, and a hash of their (id-only) records."""

    def __init__(self, client: redis.Redis, prefix: str | None = None):
        prefix = prefix or default_prefix()
        self.client = client
        self.due_key, self.body_key, self.prefix = f"{prefix}:due", f"{prefix}:deliveries", prefix
        self._claim = client.register_script(_CLAIM)

    def add(self, job_id: str, event: str, dedupe: str | None = None) -> str | None:
        """Queue one delivery of the job's `event`; with `dedupe`, a second add of the same key within a week
        is ignored."""
        if dedupe and not self.client.set(f"{self.prefix}:sent:{dedupe}", "1", nx=True, ex=7 * 24 * 3600):
            return None
        delivery_id = f"whd_{secrets.token_hex(12)}"
        record = {"job_id": job_id, "event": event, "attempts": 0}
        pipe = self.client.pipeline()
        pipe.hset(self.body_key, delivery_id, json.dumps(record))
        pipe.zadd(self.due_key, {delivery_id: time.time()})
        pipe.execute()
        return delivery_id

    def claim_due(self, limit: int = 20) -> list[tuple[str, dict[str, Any]]]:
        now = time.time()
        claimed = []
        for delivery_id in self._claim(keys=[self.due_key], args=[now, now + lease_s(), limit]):
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

    def put_back(self, delivery_id: str, delay_s: float) -> None:
        """Hand a claimed delivery back unsent (its tenant's senders are busy): due again in `delay_s`."""
        self.client.zadd(self.due_key, {delivery_id: time.time() + delay_s})

    def pending(self) -> int:
        return int(self.client.zcard(self.due_key))


@dataclass(frozen=True)
class Delivery:
    """One delivery as it is sent: everything but the ids comes from SQL, never from the Redis record."""

    delivery_id: str
    job_id: str
    tenant: str
    url: str
    event: str
    body: bytes
    secret: str | None


def _legacy_job_id(record: dict[str, Any]) -> Any:
    """The job id in a record queued before records held ids only (its body); only the id of it is used."""
    try:
        return json.loads(record["body"])["job"]["id"]
    except (KeyError, TypeError, ValueError):
        return None


def load_delivery(session: Session, delivery_id: str, record: dict[str, Any]) -> Delivery | None:
    """What the record's job says to send now; None (and why, logged) when there is nothing true to send."""
    job_id, event = record.get("job_id") or _legacy_job_id(record), record.get("event")
    job = session.get(Job, job_id) if isinstance(job_id, str) and isinstance(event, str) else None
    url = (job.spec or {}).get("webhook_url") if job is not None else None
    if job is None or not isinstance(url, str) or job.status not in TERMINAL_STATUSES or event != f"job.{job.status}":
        log.warning("webhook %s dropped: its job %r has no %r webhook to send", delivery_id, job_id, event)
        return None
    finished = job.finished_at or utcnow()
    payload = {"id": delivery_id, "event": event, "created_at": finished.isoformat()}
    payload["job"] = JobPublic.of(job).model_dump(mode="json")
    secret = get_secret(session, job.tenant, WEBHOOK_SECRET) or settings.webhook_secret
    body = json.dumps(payload, default=str).encode()
    return Delivery(delivery_id, job.id, job.tenant, url, event, body, secret)


def backoff_s(attempt: int) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): exponential backoff with "equal jitter".

    The ceiling doubles from FT_WEBHOOK_RETRY_BASE_S up to 10 minutes; the delay is half of it plus a uniform
    random share of the other half (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015). Jitter
    keeps the deliveries one outage failed together from all coming back at the same instant (Standard
    Webhooks asks for it too); keeping half the ceiling as a floor, unlike full jitter, never retries a
    receiver that is down or answering 429 almost at once.
    """
    ceiling = min(settings.webhook_retry_base_s * 2 ** min(attempt - 1, 32), MAX_BACKOFF_S)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _attempt(delivery: Delivery) -> tuple[str, str]:
    """POST once through the egress guard; returns (outcome, what happened): delivered, retry, drop or refused."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "finetune-service-webhooks",
        "X-FT-Event": delivery.event,
        **signature_headers(delivery.secret, delivery.delivery_id, delivery.body),
    }
    try:
        reply = egress.post(
            delivery.url, delivery.body, headers, settings.webhook_timeout_s, settings.webhook_max_response_bytes
        )
    except egress.EgressRefused as exc:
        return "refused", str(exc)
    except egress.EgressFailed as exc:
        return "retry", str(exc)
    if 200 <= reply.status < 300:
        return "delivered", f"HTTP {reply.status}"
    retry = reply.status >= 500 or reply.status in RETRYABLE
    return ("retry" if retry else "drop"), f"HTTP {reply.status}"


def send(outbox: Outbox, delivery: Delivery, record: dict[str, Any]) -> str:
    """Send one loaded delivery and record the outcome in the outbox (done, or retried later); returns it."""
    record = {"job_id": delivery.job_id, "event": delivery.event, "attempts": int(record.get("attempts", 0)) + 1}
    outcome, what = _attempt(delivery)
    where = egress.redact_url(delivery.url)
    if outcome == "delivered":
        outbox.done(delivery.delivery_id)
    elif outcome == "retry" and record["attempts"] < settings.webhook_max_attempts:
        outcome, delay = "retried", backoff_s(record["attempts"])
        log.info("webhook %s to %s: %s; retry in %.0fs", delivery.delivery_id, where, what, delay)
        outbox.retry_later(delivery.delivery_id, record, delay)
    else:
        outcome = "refused" if outcome == "refused" else "dropped"
        log.warning(
            "webhook %s to %s %s after %d attempt(s): %s",
            delivery.delivery_id,
            where,
            outcome,
            record["attempts"],
            what,
        )
        outbox.done(delivery.delivery_id)
    DELIVERIES.labels(outcome).inc()
    return outcome


def load_claimed(outbox: Outbox, delivery_id: str, record: Any) -> Delivery | None:
    """The claimed delivery read from SQL, or None (and the record removed) when it has nothing to send."""
    if isinstance(record, dict):
        with SessionLocal() as session:
            delivery = load_delivery(session, delivery_id, record)
        if delivery is not None:
            return delivery
    DELIVERIES.labels("dropped").inc()
    outbox.done(delivery_id)
    return None


def deliver_due(outbox: Outbox) -> int:
    """Try every due delivery once, one after another in this thread; returns how many were tried."""
    claimed = outbox.claim_due()
    for delivery_id, record in claimed:
        delivery = load_claimed(outbox, delivery_id, record)
        if delivery is not None:
            send(outbox, delivery, record)
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
        return outbox.add(job.id, f"job.{job.status}", dedupe=f"{job.id}:{job.status}")
    except Exception:  # a webhook must never fail the job it reports on
        log.exception("job %s: could not queue its webhook", job_id)
        return None

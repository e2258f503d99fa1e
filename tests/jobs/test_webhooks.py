"""Webhook delivery against real HTTP receivers, a real Redis and migrated SQLite: signed per tenant (checked with
the `standardwebhooks` library alone, as a receiver would), retried with jittered backoff, never twice, read from
SQL (not from Redis), and sent from a pool no one tenant can hold."""

import base64
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from alembic import command
from alembic.config import Config
from standardwebhooks import Webhook, WebhookVerificationError

from app.core.config import settings
from app.core.db import SessionLocal
from app.jobs.webhook_senders import WebhookDeliverer
from app.jobs.webhook_signatures import signing_key, standard_signature
from app.jobs.webhooks import Outbox, backoff_s, deliver_due, notify_job_finished, sign, verify_signature
from app.models import Job, utcnow
from app.tenants.secrets import WEBHOOK_SECRET, new_webhook_secret, set_secret
from tests.webhook_receiver import Received, WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("FT_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
SECRET = "unit-test-secret"  # FT_WEBHOOK_SECRET chosen by hand: not a whsec_ secret
# What its receivers give the library: Standard Webhooks secrets are base64, and the key is the string's bytes.
SECRET_FOR_RECEIVERS = base64.b64encode(SECRET.encode()).decode()


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def outbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Outbox]:
    monkeypatch.setattr(settings, "webhook_secret", SECRET)
    monkeypatch.setattr(settings, "webhook_retry_base_s", 0.2)
    monkeypatch.setattr(settings, "webhook_max_attempts", 3)
    monkeypatch.setattr(settings, "egress_allow", "127.0.0.0/8")  # the receivers here listen on loopback
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"ft:test-webhooks:{secrets.token_hex(4)}"
    yield Outbox(client, prefix=prefix)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def finished_job(url: str, status: str = "succeeded", tenant: str | None = None) -> str:
    """A job that has ended, with this webhook_url (stored as it is: the spec validator is not what is tested)."""
    with SessionLocal() as session:
        job = Job(
            tenant=tenant or f"hooks-{secrets.token_hex(4)}",
            status=status,
            spec={"base_model": "m", "dataset": "d", "webhook_url": url},
            finished_at=utcnow(),
        )
        session.add(job)
        session.commit()
        return job.id


def queue(outbox: Outbox, url: str, status: str = "succeeded", tenant: str | None = None) -> tuple[str, str]:
    job_id = finished_job(url, status, tenant)
    delivery = notify_job_finished(job_id, outbox=outbox)
    assert delivery is not None
    return job_id, delivery


def verified(secret: str, received: Received) -> dict:
    """What a receiver does with nothing but the `standardwebhooks` package; raises if the webhook is not ours."""
    return Webhook(secret).verify(received.body, received.headers)


def _deliver_until_idle(outbox: Outbox, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while outbox.pending() and time.monotonic() < deadline:
        deliver_due(outbox)
        time.sleep(0.05)


def test_signature_verifies_only_for_the_same_secret_body_and_a_fresh_timestamp() -> None:
    body, now = b'{"event": "job.succeeded"}', str(int(time.time()))
    signature = sign(SECRET, now, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify_signature(SECRET, body, now, signature)
    assert not verify_signature("other-secret", body, now, signature)
    assert not verify_signature(SECRET, body + b" ", now, signature)
    stale = str(int(time.time()) - 3600)
    assert not verify_signature(SECRET, body, stale, sign(SECRET, stale, body))
    assert not verify_signature(SECRET, body, "not-a-time", signature)


def test_a_delivery_is_signed_and_retried_with_backoff_until_it_lands(outbox: Outbox) -> None:
    with WebhookReceiver(statuses=[503, 500]) as receiver:
        job_id, delivery = queue(outbox, receiver.url)
        _deliver_until_idle(outbox)
    assert [r.headers["x-ft-delivery"] for r in receiver.received] == [delivery] * 3
    last = receiver.received[-1]
    assert last.json()["event"] == "job.succeeded" and last.json()["id"] == delivery
    assert last.json()["job"]["id"] == job_id and last.json()["job"]["status"] == "succeeded"
    assert last.headers["x-ft-event"] == "job.succeeded"
    assert [r.headers["webhook-id"] for r in receiver.received] == [delivery] * 3, "one id across retries"
    assert verified(SECRET_FOR_RECEIVERS, last)["job"]["id"] == job_id, "the fallback secret, by the library alone"
    assert Webhook(SECRET.encode()).verify(last.body, last.headers) == last.json(), "or the key's bytes, in Python"
    # The deprecated scheme is still sent for one release, with the same timestamp.
    assert last.headers["x-ft-timestamp"] == last.headers["webhook-timestamp"]
    assert verify_signature(SECRET, last.body, last.headers["x-ft-timestamp"], last.headers["x-ft-signature"])
    assert outbox.pending() == 0


def test_a_whsec_fallback_secret_verifies_as_given_and_a_tampered_or_replayed_webhook_does_not(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback = new_webhook_secret()
    monkeypatch.setattr(settings, "webhook_secret", fallback)
    with WebhookReceiver() as receiver:
        job_id, delivery = queue(outbox, receiver.url)
        _deliver_until_idle(outbox)
    (got,) = receiver.received
    assert got.headers["webhook-signature"].startswith("v1,") and got.headers["webhook-id"] == delivery
    assert verified(fallback, got)["job"]["id"] == job_id
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(fallback).verify(got.body.replace(b"succeeded", b"SUCCEEDED"), got.headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verified(new_webhook_secret(), got)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(fallback).verify(got.body, {**got.headers, "webhook-id": "whd_other"})
    # A captured request replayed later: a correct signature over an old timestamp is still refused.
    old = str(int(time.time()) - 3600)
    replayed = {**got.headers, "webhook-timestamp": old}
    replayed["webhook-signature"] = standard_signature(fallback, delivery, old, got.body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(fallback).verify(got.body, replayed)


def test_our_signature_is_the_librarys_for_every_kind_of_secret() -> None:
    body, msg_id, now = b'{"event": "job.failed"}', "whd_0123", int(time.time())
    for secret in (new_webhook_secret(), new_webhook_secret(), "whsec_" + base64.b64encode(b"k" * 24).decode()):
        ours = standard_signature(secret, msg_id, str(now), body)
        assert ours == Webhook(secret).sign(msg_id, datetime.fromtimestamp(now, UTC), body)
        assert len(signing_key(secret)) in (24, 32), "the whsec_ secret's decoded bytes are the key"
    # Anything else, a hand-picked FT_WEBHOOK_SECRET or a URL-safe secret made before: its UTF-8 bytes.
    for secret in ("unit-test-secret", "whsec_tenant_a", "whsec_ab-d_fgh"):
        assert signing_key(secret) == secret.encode()
        library = Webhook(base64.b64encode(secret.encode()).decode())
        assert standard_signature(secret, msg_id, str(now), body) == library.sign(
            msg_id, datetime.fromtimestamp(now, UTC), body
        )


def test_backoff_is_jittered_within_its_doubling_bounds_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "webhook_retry_base_s", 2.0)
    for attempt, ceiling in ((1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (30, 600.0), (10_000, 600.0)):
        delays = [backoff_s(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), f"retry {attempt}: equal jitter in [c/2, c]"
        assert len(set(delays)) > 150, f"retry {attempt}: the delays are random, not one schedule for all"
        assert max(delays) - min(delays) > ceiling / 4, "spread over the jitter's half of the ceiling"
    one_delivery = [backoff_s(n) for n in range(1, 8)]
    assert len(set(one_delivery)) == len(one_delivery), "each retry waits differently"


def test_a_retry_waits_for_its_backoff(outbox: Outbox) -> None:
    with WebhookReceiver(statuses=[500]) as receiver:
        queue(outbox, receiver.url, "failed")
        assert deliver_due(outbox) == 1
        assert deliver_due(outbox) == 0, "the retry is not due before its backoff"
        time.sleep(0.3)
        assert deliver_due(outbox) == 1
    assert len(receiver.received) == 2 and outbox.pending() == 0


def test_a_client_error_is_not_retried_and_a_dead_receiver_is_given_up(outbox: Outbox) -> None:
    with WebhookReceiver(statuses=[404]) as receiver:
        queue(outbox, receiver.url, "cancelled")
        _deliver_until_idle(outbox)
    assert len(receiver.received) == 1 and outbox.pending() == 0
    with WebhookReceiver() as gone:
        url = gone.url
    queue(outbox, url, "cancelled")  # nothing listens there any more: 3 attempts, then dropped
    _deliver_until_idle(outbox)
    assert outbox.pending() == 0


def test_a_refused_address_is_dropped_at_once_and_logged_redacted(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(settings, "egress_allow", "")
    with WebhookReceiver() as receiver, caplog.at_level(logging.WARNING, "app.jobs.webhooks"):
        queue(outbox, f"{receiver.url}?token=hunter2")  # e.g. stored before the guard, or allowed then
        assert deliver_due(outbox) == 1
    assert receiver.received == [] and outbox.pending() == 0, "refused: not sent, not retried"
    assert "refused after 1 attempt(s)" in caplog.text and "/hook?token=***" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_claimed_delivery_is_not_handed_out_twice(outbox: Outbox) -> None:
    queue(outbox, "http://127.0.0.1:9/never")
    first = outbox.claim_due()
    assert len(first) == 1
    assert outbox.claim_due() == [], "another API replica must not send it while it is leased"


def test_dedupe_queues_one_delivery_per_job_outcome_and_redis_holds_only_ids(outbox: Outbox) -> None:
    job_id = finished_job("http://127.0.0.1:9/x?token=not-for-redis")
    assert notify_job_finished(job_id, outbox=outbox)
    assert notify_job_finished(job_id, outbox=outbox) is None
    assert outbox.pending() == 1
    record = json.loads(outbox.client.hget(outbox.body_key, outbox.claim_due()[0][0]))
    assert record == {"job_id": job_id, "event": "job.succeeded", "attempts": 0}


def test_a_forged_outbox_record_cannot_redirect_or_invent_a_delivery(outbox: Outbox) -> None:
    with WebhookReceiver() as owner, WebhookReceiver() as attacker:
        job_id = finished_job(owner.url)
        forged = {"job_id": job_id, "event": "job.succeeded", "attempts": 0, "url": attacker.url,
                  "body": json.dumps({"job": {"id": job_id, "status": "forged"}})}  # fmt: skip
        legacy = {"url": attacker.url, "event": "job.succeeded", "attempts": 1, "body": forged["body"]}  # pre-ids
        lies = {"job_id": job_id, "event": "job.failed", "attempts": 0}  # the job succeeded
        nobody = {"job_id": "job_" + "0" * 24, "event": "job.succeeded", "attempts": 0}
        records = {"whd_forged": forged, "whd_legacy": legacy, "whd_lies": lies, "whd_nobody": nobody}
        for delivery_id, record in records.items():
            outbox.client.hset(outbox.body_key, delivery_id, json.dumps(record))
            outbox.client.zadd(outbox.due_key, {delivery_id: time.time()})
        outbox.client.hset(outbox.body_key, "whd_junk", "[1, 2]")
        outbox.client.zadd(outbox.due_key, {"whd_junk": time.time()})
        assert deliver_due(outbox) == 5
    assert attacker.received == [] and outbox.pending() == 0
    assert sorted(r.headers["x-ft-delivery"] for r in owner.received) == ["whd_forged", "whd_legacy"]
    for sent in (r.json() for r in owner.received):
        assert sent["job"]["id"] == job_id and sent["job"]["status"] == "succeeded", "the payload comes from SQL"


def test_each_tenant_signs_with_its_own_secret_and_others_with_the_fallback(outbox: Outbox) -> None:
    tenant_a, tenant_b = f"a-{secrets.token_hex(4)}", f"b-{secrets.token_hex(4)}"
    secret_a = new_webhook_secret()
    with SessionLocal() as session:
        set_secret(session, tenant_a, WEBHOOK_SECRET, secret_a)
        session.commit()
    with WebhookReceiver() as receiver:
        queue(outbox, receiver.url, tenant=tenant_a)
        queue(outbox, receiver.url, tenant=tenant_b)
        _deliver_until_idle(outbox)
    by_tenant = {r.json()["job"]["tenant"]: r for r in receiver.received}
    a, b = by_tenant[tenant_a], by_tenant[tenant_b]
    assert verified(secret_a, a)["job"]["tenant"] == tenant_a, "the tenant's secret, as the admin API showed it"
    with pytest.raises(WebhookVerificationError):
        verified(SECRET_FOR_RECEIVERS, a)
    assert verified(SECRET_FOR_RECEIVERS, b)["job"]["tenant"] == tenant_b
    with pytest.raises(WebhookVerificationError):
        verified(secret_a, b)
    assert verify_signature(secret_a, a.body, a.headers["x-ft-timestamp"], a.headers["x-ft-signature"])
    assert not verify_signature(SECRET, a.body, a.headers["x-ft-timestamp"], a.headers["x-ft-signature"])
    assert verify_signature(SECRET, b.body, b.headers["x-ft-timestamp"], b.headers["x-ft-signature"])


def test_a_trickling_receiver_is_cut_at_the_deadline_and_does_not_delay_another_tenant(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "webhook_timeout_s", 2.0)
    slow_tenant, other_tenant = f"slow-{secrets.token_hex(4)}", f"other-{secrets.token_hex(4)}"
    deliverer = WebhookDeliverer(outbox=outbox, senders=3, per_tenant=2)
    # A byte a second for 30 s: without the deadline each would hold a sender for half a minute.
    with WebhookReceiver(trickle_s=1.0, trickle_bytes=30) as trickler, WebhookReceiver() as receiver:
        for _ in range(3):  # as many as there are senders: only the tenant's share of them may be taken
            queue(outbox, trickler.url, tenant=slow_tenant)
        queue(outbox, receiver.url, tenant=other_tenant)
        started = time.monotonic()
        while not receiver.received and time.monotonic() - started < 10:
            deliverer.dispatch()
            time.sleep(0.05)
        other_waited = time.monotonic() - started
        while len(trickler.received) < 3 and time.monotonic() - started < 10:
            deliverer.dispatch()  # the third slow one starts once one of the first two is cut
            time.sleep(0.05)
        assert deliverer.wait_idle(timeout=5)
        all_done = time.monotonic() - started
    deliverer.pool.shutdown()
    assert other_waited < 1.0, f"the other tenant's delivery waited {other_waited:.1f}s behind trickling receivers"
    assert len(trickler.received) == 3 and all_done < 6.5, f"each trickle is cut at 2s; all took {all_done:.1f}s"
    assert outbox.pending() == 3, "the cut ones are retried later; the other tenant's was delivered"

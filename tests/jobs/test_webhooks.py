"""Webhook delivery against a real HTTP receiver and a real Redis: signed, retried with backoff, never twice."""

import json
import os
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from app.core.config import settings
from app.jobs.webhooks import Outbox, backoff_s, deliver_due, sign, verify_signature
from tests.webhook_receiver import WebhookReceiver

REDIS_URL = os.environ.get("FT_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
SECRET = "unit-test-secret"


@pytest.fixture
def outbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Outbox]:
    monkeypatch.setattr(settings, "webhook_secret", SECRET)
    monkeypatch.setattr(settings, "webhook_retry_base_s", 0.2)
    monkeypatch.setattr(settings, "webhook_max_attempts", 3)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"ft:test-webhooks:{secrets.token_hex(4)}"
    yield Outbox(client, prefix=prefix)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def _deliver_until_idle(outbox: Outbox, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as http:
        while outbox.pending() and time.monotonic() < deadline:
            deliver_due(outbox, http)
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
        delivery = outbox.add(receiver.url, "job.succeeded", {"job": {"id": "job_1", "status": "succeeded"}})
        _deliver_until_idle(outbox)
    assert [r.headers["x-ft-delivery"] for r in receiver.received] == [delivery] * 3
    last = receiver.received[-1]
    assert last.json()["event"] == "job.succeeded" and last.json()["job"]["id"] == "job_1"
    assert last.headers["x-ft-event"] == "job.succeeded"
    assert verify_signature(SECRET, last.body, last.headers["x-ft-timestamp"], last.headers["x-ft-signature"])
    assert outbox.pending() == 0


def test_backoff_doubles_and_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "webhook_retry_base_s", 2.0)
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_s(30) == 600.0


def test_a_retry_waits_for_its_backoff(outbox: Outbox) -> None:
    with WebhookReceiver(statuses=[500]) as receiver, httpx.Client(timeout=5) as http:
        outbox.add(receiver.url, "job.failed", {})
        assert deliver_due(outbox, http) == 1
        assert deliver_due(outbox, http) == 0, "the retry is not due before its backoff"
        time.sleep(0.3)
        assert deliver_due(outbox, http) == 1
    assert len(receiver.received) == 2 and outbox.pending() == 0


def test_a_client_error_is_not_retried_and_a_dead_receiver_is_given_up(outbox: Outbox) -> None:
    with WebhookReceiver(statuses=[404]) as receiver:
        outbox.add(receiver.url, "job.cancelled", {})
        _deliver_until_idle(outbox)
    assert len(receiver.received) == 1 and outbox.pending() == 0
    with WebhookReceiver() as gone:
        url = gone.url
    outbox.add(url, "job.cancelled", {})  # nothing listens there any more: 3 attempts, then dropped
    _deliver_until_idle(outbox)
    assert outbox.pending() == 0


def test_a_claimed_delivery_is_not_handed_out_twice(outbox: Outbox) -> None:
    outbox.add("http://127.0.0.1:9/never", "job.succeeded", {})
    first = outbox.claim_due()
    assert len(first) == 1
    assert outbox.claim_due() == [], "another API replica must not send it while it is leased"


def test_dedupe_queues_one_delivery_per_job_outcome(outbox: Outbox) -> None:
    assert outbox.add("http://127.0.0.1:9/x", "job.succeeded", {}, dedupe="job_1:succeeded")
    assert outbox.add("http://127.0.0.1:9/x", "job.succeeded", {}, dedupe="job_1:succeeded") is None
    assert outbox.pending() == 1
    record = json.loads(outbox.client.hget(outbox.body_key, outbox.claim_due()[0][0]))
    assert record["attempts"] == 0 and record["url"] == "http://127.0.0.1:9/x"

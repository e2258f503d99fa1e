"""The embedded serving queue in a real Redis: bounded, round-robin across tenants, expired requests dropped."""

import json
import secrets
import time
from collections.abc import Iterator

import pytest
import redis

from app.broker.serving import QueueFull, ServingQueue
from app.core.config import settings


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServingQueue]:
    monkeypatch.setattr(settings, "training_queue", f"serve-test-{secrets.token_hex(4)}")
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield ServingQueue(client)
    for key in client.scan_iter(f"ft:serve:{settings.training_queue}:*"):
        client.delete(key)


def request(tenant: str, n: int, deadline_s: float = 60) -> dict:
    return {"id": f"cmpl_{tenant}_{n}", "tenant": tenant, "deadline": time.time() + deadline_s, "prompt": "hi"}


def test_tenants_are_served_round_robin_so_a_burst_does_not_starve_a_single_request(queue: ServingQueue) -> None:
    for n in range(6):
        queue.enqueue(request("busy", n))
    queue.enqueue(request("quiet", 0))
    first = [r["id"] for r in queue.take(3)]
    assert first[:2] == ["cmpl_busy_0", "cmpl_quiet_0"], first
    rest = [r["id"] for r in queue.take(10)]
    assert rest == [f"cmpl_busy_{n}" for n in range(2, 6)] and first[2] == "cmpl_busy_1"
    assert queue.take(5) == []


def test_the_queue_is_bounded_and_answered_or_expired_requests_stop_counting(
    queue: ServingQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "serving_max_queue", 3)
    queue.enqueue(request("a", 0))
    queue.enqueue(request("a", 1, deadline_s=0.2))
    assert queue.enqueue(request("b", 0)) == 3
    with pytest.raises(QueueFull):
        queue.enqueue(request("b", 1))
    queue.finish("cmpl_a_0")
    time.sleep(0.3)  # cmpl_a_1's deadline passes
    assert queue.waiting() == 1
    queue.enqueue(request("b", 1))
    taken = [r["id"] for r in queue.take(10)]
    assert "cmpl_a_1" not in taken and set(taken) == {"cmpl_b_0", "cmpl_b_1"}


def test_answers_stream_entry_by_entry(queue: ServingQueue) -> None:
    queue.publish("cmpl_x", type="delta", index=0, text="Hel")
    queue.publish("cmpl_x", type="done", index=0, finish_reason="stop")
    entries = queue.client.xrange(f"ft:serve:{settings.training_queue}:out:cmpl_x")
    assert [e[1]["data"] for e in entries][0] == '{"type": "delta", "index": 0, "text": "Hel"}'


def test_a_record_naming_another_calls_id_is_dropped(queue: ServingQueue) -> None:
    queue.enqueue(request("a", 0))
    forged = {**request("a", 1), "id": "cmpl_victim"}
    queue.client.set(f"ft:serve:{settings.training_queue}:req:cmpl_a_0", json.dumps(forged))
    assert queue.take(5) == []

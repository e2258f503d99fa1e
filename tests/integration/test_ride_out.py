"""The worker's side of an outage, in-process, against servers really stopped: the reporter's buffered points and
its lease (a private PostgreSQL), its event outbox (a private Redis), the S3 store's retries (moto behind a gate).

No training here, so each fault takes seconds and its timing is exact; tests/integration/test_outages.py stages the
same faults under a real job on a real stack.
"""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from botocore.exceptions import EndpointConnectionError
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.broker import events
from app.core import db
from app.core.config import settings
from app.models import Job, MetricPoint, utcnow
from app.storage.s3 import S3Store, is_transient
from tests.private_services import PrivatePostgres, PrivateRedis, TcpGate
from tests.s3_server import moto_server
from worker import job_runner, record
from worker.lease import RIDE_OUT_SHARE, LeaseExpired, ride_out
from worker.outbox import EventOutbox
from worker.report import JobReporter

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

LEASE_S = 6.0
WORKER = "ride-out-test:1"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().init()
    try:
        migrate = [sys.executable, "-m", "alembic", "upgrade", "head"]
        subprocess.run(migrate, env={**os.environ, "FT_DATABASE_URL": server.url}, check=True, capture_output=True)
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.destroy()


@pytest.fixture
def reporting(postgres: PrivatePostgres, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The worker's SQL and Redis pointed at the private servers, a short lease, and one running job: its id."""
    engine = db.make_engine(postgres.url)
    monkeypatch.setattr(db, "SessionLocal", sessionmaker(bind=engine, expire_on_commit=False))
    client = redis.Redis.from_url(private_redis.url, decode_responses=True, socket_timeout=5)
    monkeypatch.setattr(events, "redis_client", lambda: client)
    monkeypatch.setattr(settings, "lease_seconds", LEASE_S)
    monkeypatch.setattr(settings, "heartbeat_seconds", 0.2)
    with db.session_scope() as session:
        job = Job(tenant="ride-out", name="ride-out", spec={}, status="running", worker=WORKER, attempts=1)
        job.lease_expires_at = utcnow() + timedelta(seconds=LEASE_S)
        session.add(job)
        session.flush()
        job_id = job.id
    yield job_id
    if not postgres.answers():
        postgres.start()
    engine.dispose()


def _point(step: int) -> dict:
    return {"step": step, "total_steps": 100, "epoch": step / 100, "loss": 2.0 - step / 100, "learning_rate": 1e-4}


def _stored_steps(job_id: str) -> list[int]:
    with db.session_scope() as session:
        query = select(MetricPoint.step).where(MetricPoint.job_id == job_id).order_by(MetricPoint.id)
        return list(session.scalars(query))


def _wait(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_points_made_while_postgres_is_away_are_stored_once_in_order(postgres: PrivatePostgres, reporting: str) -> None:
    reporter = JobReporter(reporting, WORKER)
    for step in range(1, 6):
        reporter.train_point(_point(step))
    _wait(lambda: len(_stored_steps(reporting)) == 5)
    postgres.stop()
    away = time.monotonic()
    for step in range(6, 31):  # training goes on: the points wait in memory
        reporter.train_point(_point(step))
        time.sleep(0.04)
    assert not reporter.should_stop(), "an outage shorter than the lease does not stop training"
    time.sleep(max(0.0, away + 2.0 - time.monotonic()))
    postgres.start()
    reporter.close()
    assert _stored_steps(reporting) == list(range(1, 31)), "in order, each once"
    with db.session_scope() as session:
        job = session.get(Job, reporting)
        assert job.step == 30 and job.worker == WORKER and job.status == "running"
        assert job.lease_expires_at > utcnow() + timedelta(seconds=LEASE_S / 2), "the same lease, renewed"
    assert not reporter.lease_lost
    reporter.end()


def test_a_write_retried_after_it_landed_stores_each_step_once(reporting: str) -> None:
    """The commit went through but its answer was lost: the retry carries the same points again."""
    with db.session_scope() as session:
        record.store_points(session, reporting, [("train", _point(step)) for step in range(1, 11)])
    with db.session_scope() as session:
        record.store_points(session, reporting, [("train", _point(step)) for step in range(5, 16)])
    assert _stored_steps(reporting) == list(range(1, 16))


def test_postgres_away_for_most_of_the_lease_stops_the_copy(postgres: PrivatePostgres, reporting: str) -> None:
    reporter = JobReporter(reporting, WORKER)
    for step in range(1, 4):
        reporter.train_point(_point(step))
    _wait(lambda: len(_stored_steps(reporting)) == 3)
    postgres.stop()
    stopped = time.monotonic()
    with pytest.raises(LeaseExpired):  # a write on the training thread (a checkpoint's record) gives up too
        ride_out(reporter.lease, "recording a checkpoint", lambda session: record.job_status(session, reporting))
    gave_up = time.monotonic() - stopped
    assert gave_up <= RIDE_OUT_SHARE * LEASE_S + 0.5, f"gave up after {gave_up:.1f} s"
    assert reporter.should_stop() and reporter.lease_lost
    for step in range(4, 10):
        reporter.train_point(_point(step))  # the step in flight when it stopped: never recorded
    time.sleep(max(0.0, stopped + LEASE_S + 0.5 - time.monotonic()))  # past the record's expiry as well
    postgres.start()
    reporter.close()
    reporter.end()
    assert _stored_steps(reporting) == [1, 2, 3], "a copy that stopped records nothing more"
    with db.session_scope() as session:
        assert not record.renew_lease(session, reporting, WORKER), "an expired lease is not renewed"


def test_a_job_taken_while_postgres_is_away_is_claimed_when_it_is_back(
    postgres: PrivatePostgres, reporting: str
) -> None:
    """The message arrives during the outage: the claim waits (as long as a lease would) instead of failing."""
    with db.session_scope() as session:
        job = Job(tenant="ride-out-claim", name="claim", spec={"not": "a spec"}, status="queued")  # fails once claimed
        session.add(job)
        session.flush()
        job_id = job.id
    postgres.stop()
    threading.Timer(2.0, postgres.start).start()
    assert job_runner._attempt(job_id, WORKER) == "failed"
    with db.session_scope() as session:
        claimed = session.get(Job, job_id)
        assert (claimed.status, claimed.attempts, claimed.error_type) == ("failed", 1, "invalid_spec")


def _stream_steps(client: redis.Redis, job_id: str) -> list[int]:
    entries = client.xrange(events.stream_key(job_id))
    return [json.loads(fields["data"])["step"] for _, fields in entries if fields["type"] == "metric"]


def test_events_wait_for_redis_and_go_in_order_once(private_redis: PrivateRedis, reporting: str) -> None:
    client = events.redis_client()
    outbox = EventOutbox(reporting)
    for step in range(1, 6):
        outbox.add("metric", _point(step))
    assert outbox.drain(5)
    private_redis.stop()
    for step in range(6, 21):
        outbox.add("metric", _point(step))
    time.sleep(0.5)
    assert not outbox.drain(0.5), "nothing can leave while Redis is away"
    private_redis.start()
    outbox.close()
    assert _stream_steps(client, reporting) == list(range(1, 21))


def test_a_batch_whose_reply_was_lost_is_not_sent_twice(reporting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MULTI/EXEC landed but the connection dropped before its answer: the counter tells the retry."""
    client = events.redis_client()
    real_execute, lost = redis.client.Pipeline.execute, threading.Event()

    def execute_then_lose_the_reply(pipe: redis.client.Pipeline, *args: object, **kwargs: object) -> object:
        result = real_execute(pipe, *args, **kwargs)
        if not lost.is_set():
            lost.set()
            raise redis.ConnectionError("Connection closed by server.")
        return result

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute_then_lose_the_reply)
    outbox = EventOutbox(reporting)
    for step in range(1, 11):
        outbox.add("metric", _point(step))
    outbox.close()
    assert lost.is_set() and _stream_steps(client, reporting) == list(range(1, 11))


@pytest.fixture(scope="module")
def s3(session_dir: Path) -> Iterator[tuple[str, TcpGate, str]]:
    with moto_server(session_dir / "ride-out-s3") as server:
        gate = TcpGate(int(server.endpoint_url.rsplit(":", 1)[1])).open()
        yield server.make_bucket(), gate, server.endpoint_url
        gate.close()


def test_an_upload_waits_out_an_s3_outage(s3: tuple[str, TcpGate, str], tmp_path: Path) -> None:
    bucket, gate, direct = s3
    store = S3Store(bucket, endpoint_url=gate.url, region="us-east-1", retry_seconds=30)
    payload = tmp_path / "adapter.tar.gz"
    payload.write_bytes(os.urandom(300_000))
    gate.close()
    threading.Timer(3.0, gate.open).start()
    started = time.monotonic()
    store.put_file("jobs/x/adapter.tar.gz", payload)
    assert time.monotonic() - started >= 2.5, "it really waited for the endpoint"
    assert S3Store(bucket, endpoint_url=direct, region="us-east-1").exists("jobs/x/adapter.tar.gz")


def test_an_upload_gives_up_after_the_retry_window(s3: tuple[str, TcpGate, str], tmp_path: Path) -> None:
    bucket, gate, _ = s3
    store = S3Store(bucket, endpoint_url=gate.url, region="us-east-1", retry_seconds=1)
    payload = tmp_path / "small"
    payload.write_bytes(b"x")
    gate.close()
    try:
        with pytest.raises(EndpointConnectionError) as failed:
            store.put_file("jobs/x/small", payload)
        assert is_transient(failed.value)
    finally:
        gate.open()

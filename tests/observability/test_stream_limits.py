"""GET /jobs/{id}/events under limits: streams per tenant, per replica, a maximum lifetime, a revoked key, and one
blocked Redis read per followed job. A real uvicorn in-process (tests/inprocess_server.py), migrated SQLite and the
real Redis."""

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import update

from app.broker import events
from app.broker.events import redis_client
from app.core.config import settings
from app.core.db import SessionLocal
from app.models import ApiKey, Job, utcnow
from app.observability import stream
from app.tenants.auth import create_key
from tests.inprocess_server import serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"streams-{secrets.token_hex(4)}"


@pytest.fixture
def key(tenant: str) -> str:
    with SessionLocal() as session:
        key = create_key(session, "streams", tenant=tenant)
        session.commit()
    return key


@pytest.fixture
def job_id(tenant: str) -> str:
    """A running job: its stream stays open until it ends."""
    with SessionLocal() as session:
        job = Job(tenant=tenant, status="running", spec={"base_model": "m", "dataset": "d"})
        session.add(job)
        session.commit()
        return job.id


@pytest.fixture
def base_url() -> Iterator[str]:
    with serving() as url:
        yield url


def client(base_url: str, key: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10, limits=httpx.Limits(max_connections=50))


async def read_to_end(response: httpx.Response, within_s: float) -> str:
    """The rest of the stream; fails if it is still open after `within_s`."""

    async def read() -> str:
        return "".join([chunk async for chunk in response.aiter_text()])

    return await asyncio.wait_for(read(), within_s)


def named_connections(name: str) -> list[dict]:
    return [c for c in redis_client().client_list() if c.get("name") == name]


def test_a_revoked_keys_stream_ends_at_the_next_check(
    monkeypatch: pytest.MonkeyPatch, base_url: str, key: str, tenant: str, job_id: str
) -> None:
    monkeypatch.setattr(stream, "REAUTH_EVERY_S", 0.3)

    async def run() -> tuple[str, float]:
        async with client(base_url, key) as http, http.stream("GET", f"/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            await asyncio.sleep(0.5)  # open, and checked once already
            with SessionLocal() as session:
                session.execute(update(ApiKey).where(ApiKey.tenant == tenant).values(revoked_at=utcnow()))
                session.commit()
            started = time.monotonic()
            return await read_to_end(response, 5), time.monotonic() - started

    text, took = asyncio.run(run())
    assert "revoked" in text and took < 2, (text, took)


def test_a_tenants_streams_are_capped_and_a_closed_one_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch, base_url: str, key: str, tenant: str, job_id: str
) -> None:
    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: {"max_event_streams": 2}})

    async def run() -> None:
        async with client(base_url, key) as http:
            first = await http.send(http.build_request("GET", f"/jobs/{job_id}/events"), stream=True)
            async with http.stream("GET", f"/jobs/{job_id}/events") as second:
                assert first.status_code == second.status_code == 200
                refused = await http.get(f"/jobs/{job_id}/events")
                assert refused.status_code == 429, refused.text
                body = refused.json()
                assert (body["limit"], body["allowed"], body["usage"]) == ("max_event_streams", 2, 2)
                assert int(refused.headers["Retry-After"]) > 0 and "2 event streams open" in body["detail"]
                await first.aclose()  # the client goes away: its slot comes back
                deadline = time.monotonic() + 3
                while True:
                    async with http.stream("GET", f"/jobs/{job_id}/events") as third:
                        if third.status_code == 200:
                            break
                    assert time.monotonic() < deadline, "a closed stream's slot was not given back"
                    await asyncio.sleep(0.1)

    asyncio.run(run())


def test_a_replica_refuses_streams_of_more_jobs_than_its_redis_connections(
    monkeypatch: pytest.MonkeyPatch, base_url: str, key: str, tenant: str, job_id: str
) -> None:
    with SessionLocal() as session:
        other = Job(tenant=tenant, status="running", spec={"base_model": "m", "dataset": "d"})
        session.add(other)
        session.commit()
        other_id = other.id
    monkeypatch.setattr(settings, "event_stream_connections", 1)

    async def run() -> None:
        async with client(base_url, key) as http, http.stream("GET", f"/jobs/{job_id}/events") as first:
            assert first.status_code == 200
            async with http.stream("GET", f"/jobs/{job_id}/events") as same_job:
                assert same_job.status_code == 200, "a second follower of the job shares its reader"
            busy = await http.get(f"/jobs/{other_id}/events")
            assert busy.status_code == 503 and "FT_EVENT_STREAM_CONNECTIONS" in busy.json()["detail"]
            assert int(busy.headers["Retry-After"]) > 0

    asyncio.run(run())


def test_a_stream_ends_after_its_lifetime_saying_where_to_resume(
    monkeypatch: pytest.MonkeyPatch, base_url: str, key: str, job_id: str
) -> None:
    monkeypatch.setattr(settings, "stream_max_seconds", 0.5)
    event_id = events.publish(job_id, "metric", {"step": 1, "loss": 1.0})

    async def run() -> str:
        async with client(base_url, key) as http, http.stream("GET", f"/jobs/{job_id}/events") as response:
            return await read_to_end(response, 3)

    text = asyncio.run(run())
    assert f"id: {event_id}" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith(": this stream ends after FT_STREAM_MAX_SECONDS=0.5s") and last.endswith(
        f"reconnect with Last-Event-ID: {event_id} to go on where it stopped"
    ), text


def test_followers_of_one_job_share_one_blocked_read(monkeypatch: pytest.MonkeyPatch, key: str, tenant: str) -> None:
    name = f"ft-test-events-{secrets.token_hex(4)}"
    monkeypatch.setattr(events, "STREAM_CLIENT_NAME", name)  # before the server's loop makes its pool
    with SessionLocal() as session:
        jobs = [Job(tenant=tenant, status="running", spec={"base_model": "m", "dataset": "d"}) for _ in range(2)]
        session.add_all(jobs)
        session.commit()
        first, second = (job.id for job in jobs)

    async def wait_for(connections: int) -> None:
        deadline = time.monotonic() + 3
        while len(named_connections(name)) != connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(named_connections(name)) == connections

    async def run(base_url: str) -> None:
        async with client(base_url, key) as http:
            for _ in range(3):  # replays hold no reader
                assert (await http.get(f"/jobs/{first}/events?follow=false")).status_code == 200
            assert named_connections(name) == []
            request = http.build_request
            following = [await http.send(request("GET", f"/jobs/{first}/events"), stream=True) for _ in range(3)]
            await wait_for(1)  # three followers, one job: one reader
            following.append(await http.send(request("GET", f"/jobs/{second}/events"), stream=True))
            await wait_for(2)  # a second job: its own reader
            for response in following:
                await response.aclose()

    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: {"max_event_streams": 10}})
    with serving() as base_url:
        asyncio.run(run(base_url))

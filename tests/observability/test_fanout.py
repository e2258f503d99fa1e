"""The shared reader of a job's events (app/observability/fanout.py) behind GET /jobs/{id}/events: followers that
fall behind are detached and rejoin from the stream without losing or repeating an event, and the reader stops with
its last follower. A real uvicorn in-process, migrated SQLite and the real Redis.
"""

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config

from app.broker import events
from app.core.db import SessionLocal
from app.models import Job
from app.observability import fanout
from app.tenants.auth import create_key
from bench.watchers import follow
from tests.inprocess_server import serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def running_job() -> tuple[str, str]:
    """(key, job id) of a running job of a tenant of its own."""
    tenant = f"fanout-{secrets.token_hex(4)}"
    with SessionLocal() as session:
        key = create_key(session, "fanout", tenant=tenant)
        job = Job(tenant=tenant, status="running", spec={"base_model": "m", "dataset": "d"})
        session.add(job)
        session.commit()
        return key, job.id


async def _followers_of_a_burst(base_url: str, key: str, job_id: str, followers: int, burst: int) -> list:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
        first = events.publish(job_id, "status", {"status": "running"})
        tasks = [asyncio.create_task(follow(http, job_id)) for _ in range(followers)]
        await asyncio.sleep(1.0)  # all joined: they wait on the one reader
        burst_of = events.redis_client().pipeline(transaction=True)  # one MULTI: the reader gets it in one read
        for step in range(1, burst + 1):  # a burst the reader hands over in one batch, too big for any queue
            events.publish(job_id, "metric", {"step": step, "loss": 1.0 / step}, client=burst_of)
        burst_of.execute()
        events.publish(job_id, "status", {"status": "succeeded"})
        got = await asyncio.gather(*tasks)
    assert all(g[0].id == first for g in got)
    return got


def test_followers_that_fall_behind_rejoin_from_the_stream_and_miss_nothing(
    monkeypatch: pytest.MonkeyPatch, running_job: tuple[str, str]
) -> None:
    monkeypatch.setattr(fanout, "QUEUE_EVENTS", 5)  # every follower overflows on the burst
    detached: list[str] = []
    monkeypatch.setattr(fanout.log, "info", lambda message, *args: detached.append(message % args))
    key, job_id = running_job
    with serving() as base_url:
        got = asyncio.run(_followers_of_a_burst(base_url, key, job_id, followers=4, burst=300))
    assert len([m for m in detached if "detached" in m]) >= 4, "each follower fell behind at least once"
    for events_got in got:
        steps = [e.json()["step"] for e in events_got if e.event == "metric"]
        assert steps == list(range(1, 301)), "each step once, in order, across the detach and the rejoin"
        assert events_got[-1].json()["status"] == "succeeded"


def test_the_reader_stops_with_its_last_follower(running_job: tuple[str, str]) -> None:
    key, job_id = running_job

    async def run(base_url: str) -> tuple[int, int]:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
            streams = [await http.send(http.build_request("GET", f"/jobs/{job_id}/events"), stream=True)]
            streams.append(await http.send(http.build_request("GET", f"/jobs/{job_id}/events"), stream=True))
            await asyncio.sleep(0.5)
            while_open = sum(job_id in f.readers for f in list(fanout._fanouts.values()))
            for response in streams:
                await response.aclose()
            await asyncio.sleep(0.5)
            return while_open, sum(job_id in f.readers for f in list(fanout._fanouts.values()))

    with serving() as base_url:
        while_open, after = asyncio.run(run(base_url))
    assert (while_open, after) == (1, 0)

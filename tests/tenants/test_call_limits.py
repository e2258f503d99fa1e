"""Worker calls (generate, predict, evaluations, exports): one rate limit, a cap on calls in flight, waits that hold
no thread, and call results only their tenant can read. In-process: migrated SQLite, the real Redis, a queue no
worker reads (the calls stay queued, as behind a busy worker)."""

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.broker import calls
from app.broker.events import redis_client
from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.models import Export, Job, utcnow
from app.tenants import slots
from app.tenants.auth import create_key
from tests.inprocess_server import serving

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"base_model": "m", "dataset": "d"}
PROMPTS = {"prompts": ["hello"]}


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture(autouse=True)
def unworked_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Calls go to a queue no worker reads; its messages are deleted afterwards."""
    queue = f"inference-unworked-{secrets.token_hex(4)}"
    monkeypatch.setattr(settings, "inference_queue", queue)
    yield queue
    redis_client().delete(queue)


@pytest.fixture
def tenant() -> str:
    return f"calls-{secrets.token_hex(4)}"


def new_key(tenant: str) -> str:
    with SessionLocal() as session:
        key = create_key(session, "calls", tenant=tenant)
        session.commit()
    return key


@pytest.fixture
def client(tenant: str) -> Iterator[TestClient]:
    headers = {"Authorization": f"Bearer {new_key(tenant)}"}
    with TestClient(create_app(), headers=headers, raise_server_exceptions=False) as c:
        yield c


def override(monkeypatch: pytest.MonkeyPatch, tenant: str, **values: float) -> None:
    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: values})


def succeeded_job(tenant: str) -> str:
    with SessionLocal() as session:
        job = Job(tenant=tenant, status="succeeded", spec=SPEC)
        session.add(job)
        session.commit()
        return job.id


def assert_refused(response: httpx.Response, limit: str, allowed: int, usage: int) -> dict:
    assert response.status_code == 429, response.text
    body = response.json()
    assert (body["limit"], body["allowed"], body["usage"]) == (limit, allowed, usage), body
    assert int(response.headers["Retry-After"]) >= 1
    return body


def test_generate_predict_evaluations_exports_share_one_rate_limit(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    override(monkeypatch, tenant, inference_rate_per_minute=3, max_concurrent_calls=100)
    job_id = succeeded_job(tenant)
    assert client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS).status_code == 202
    assert client.post(f"/jobs/{job_id}/predict", json={"texts": ["x"]}).status_code == 409  # counted all the same
    assert client.post(f"/jobs/{job_id}/exports", json={}).status_code == 202
    refused = client.post(f"/jobs/{job_id}/evaluations", json={})
    body = assert_refused(refused, "inference_rate_per_minute", 3, 3)
    assert "evaluations refused" in body["detail"] and "inference_rate_per_minute=3" in body["detail"]
    assert_refused(client.post(f"/jobs/{job_id}/generate", json=PROMPTS), "inference_rate_per_minute", 3, 3)
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("generate", "predict", "evaluations", "exports"):
        assert "429" in paths[f"/jobs/{{job_id}}/{path}"]["post"]["responses"], path


def test_calls_in_flight_are_capped_until_the_worker_finishes_or_they_expire(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    override(monkeypatch, tenant, max_concurrent_calls=2)
    job_id = succeeded_job(tenant)
    first, _ = (client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS) for _ in range(2))
    assert first.status_code == 202
    body = assert_refused(client.post(f"/jobs/{job_id}/generate", json=PROMPTS), "max_concurrent_calls", 2, 2)
    assert "2 worker calls in flight" in body["detail"]
    calls.finish(first.json()["id"], "succeeded", results=[])  # what the worker records: the slot is free again
    assert client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS).status_code == 202
    assert client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS).status_code == 429
    # A slot outlives the API's wait (FT_INFERENCE_TIMEOUT_S) only by CALL_SLOT_MARGIN_S: nobody can leak it.
    monkeypatch.setattr(settings, "inference_timeout_s", 0.3)
    monkeypatch.setattr(slots, "CALL_SLOT_MARGIN_S", 0)
    redis_client().delete(calls.slot_key(tenant))
    for _ in range(2):
        assert client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS).status_code == 202
    assert client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS).status_code == 429
    time.sleep(0.5)
    assert client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS).status_code == 202


def test_exports_and_evaluations_in_flight_count_against_the_same_cap(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    override(monkeypatch, tenant, max_concurrent_calls=2)
    job_id = succeeded_job(tenant)
    with SessionLocal() as session:
        exports = [Export(job_id=job_id, kind="merged", status=status) for status in ("queued", "running")]
        lost = Export(job_id=job_id, kind="merged", status="queued", created_at=utcnow() - timedelta(hours=2))
        session.add_all([*exports, lost])  # a queued row that old most likely lost its message: not counted
        session.commit()
        ids = [e.id for e in exports]
    assert_refused(client.post(f"/jobs/{job_id}/generate", json=PROMPTS), "max_concurrent_calls", 2, 2)
    assert_refused(client.post(f"/jobs/{job_id}/exports", json={}), "max_concurrent_calls", 2, 2)
    with SessionLocal() as session:
        session.execute(update(Export).where(Export.id == ids[0]).values(status="succeeded"))
        session.commit()
    assert client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS).status_code == 202
    assert_refused(client.post(f"/jobs/{job_id}/exports", json={}), "max_concurrent_calls", 2, 2)  # 1 row + 1 call


def test_call_results_are_readable_only_by_their_tenant(tenant: str, client: TestClient) -> None:
    job_id = succeeded_job(tenant)
    call_id = client.post(f"/jobs/{job_id}/generate?wait=false", json=PROMPTS).json()["id"]
    state = calls.read(call_id)
    assert {k: state[k] for k in ("id", "job_id", "status", "tenant")} == {
        "id": call_id,
        "job_id": job_id,
        "status": "queued",
        "tenant": tenant,
    }
    assert client.get(f"/jobs/{job_id}/generations/{call_id}").status_code == 200
    # A call record of this job that names another tenant (not the API's doing) reads as an unknown call.
    forged = f"gen_{secrets.token_hex(12)}"
    redis_client().set(
        calls.call_key(forged),
        json.dumps({"id": forged, "job_id": job_id, "status": "succeeded", "tenant": "x"}),
        ex=60,
    )
    unknown = client.get(f"/jobs/{job_id}/generations/gen_{secrets.token_hex(12)}")
    refused = client.get(f"/jobs/{job_id}/generations/{forged}")
    assert unknown.status_code == refused.status_code == 404
    assert refused.json()["detail"] == unknown.json()["detail"].replace(unknown.url.path.rsplit("/", 1)[1], forged)
    other = TestClient(create_app(), headers={"Authorization": f"Bearer {new_key(tenant + '-other')}"})
    assert other.get(f"/jobs/{job_id}/generations/{call_id}").status_code == 404


def test_waiting_calls_hold_no_thread(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    """60 generate calls waiting on a worker (more than anyio's 40 threads) leave the API answering others."""
    override(monkeypatch, tenant, max_concurrent_calls=100, inference_rate_per_minute=1000)
    monkeypatch.setattr(settings, "inference_timeout_s", 4)
    job_id = succeeded_job(tenant)
    headers = {"Authorization": f"Bearer {new_key(tenant)}"}

    async def run(base_url: str) -> tuple[list[int], float]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as http:
            waits = [asyncio.create_task(http.post(f"/jobs/{job_id}/generate", json=PROMPTS)) for _ in range(60)]
            deadline = time.monotonic() + 3
            while redis_client().zcard(calls.slot_key(tenant)) < 60 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # until every call is sent and waiting
            started = time.monotonic()
            listed = await http.get("/jobs")
            took = time.monotonic() - started
            assert listed.status_code == 200, listed.text
            return [r.status_code for r in await asyncio.gather(*waits)], took

    with serving() as base_url:
        statuses, took = asyncio.run(run(base_url))
    assert took < 1.5, f"GET /jobs took {took:.1f}s behind 60 waiting calls"
    assert statuses == [202] * 60  # each waited its 4 s, then answered with an id to poll

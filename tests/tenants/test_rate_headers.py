"""Rate limits on a moving window in Redis (the `limits` library) and the RateLimit-* headers, in-process."""

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from limits.storage import RedisStorage
from limits.storage import redis as limits_redis
from limits.strategies import MovingWindowRateLimiter

from app.core.config import settings
from app.core.db import SessionLocal
from app.core.errors import Conflict, TooManyRequests, install_error_handlers
from app.main import create_app
from app.tenants import limits
from app.tenants.auth import Caller, create_key, current_caller

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"base_model": "tiny-base", "dataset": "ds_missing"}  # a cheap 200: a report listing the missing dataset


class Clock:
    """Stands in for the time module where the limiter stamps hits and where limits.py reads the time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"rates-{secrets.token_hex(4)}"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(float(int(time.time())))  # whole seconds: the differences the tests check are exact
    monkeypatch.setattr(limits_redis, "time", clock)
    monkeypatch.setattr(limits, "time", clock)
    return clock


@pytest.fixture
def client(tenant: str) -> Iterator[TestClient]:
    with SessionLocal() as session:
        key = create_key(session, "rates", tenant=tenant)
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False) as c:
        yield c


def override(monkeypatch: pytest.MonkeyPatch, tenant: str, **values: int) -> None:
    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: values})


def test_a_burst_at_a_windows_edge_cannot_pass_the_limit(
    monkeypatch: pytest.MonkeyPatch, tenant: str, clock: Clock
) -> None:
    """A fixed window let 3 requests at 0:59.5 and 3 more at 1:00.5; any 60 seconds now hold at most 3."""
    override(monkeypatch, tenant, submit_rate_per_minute=3)
    clock.now = (time.time() // 60) * 60 + 59.5  # half a second before a clock minute ends
    for _ in range(3):
        limits.hit_rate_limit(tenant, "submit")
    clock.now += 1.0  # the next clock minute
    with pytest.raises(TooManyRequests) as refused:
        limits.hit_rate_limit(tenant, "submit")
    assert refused.value.extra == {"limit": "submit_rate_per_minute", "allowed": 3, "usage": 3}
    assert refused.value.headers is not None and refused.value.headers["Retry-After"] == "59"
    clock.now += 59.1  # a minute after the first three: they leave the window, and a refused one never counted
    for _ in range(3):
        limits.hit_rate_limit(tenant, "submit")
    limits.hit_rate_limit(f"{tenant}-other", "submit")  # another tenant has its own count
    limits.hit_rate_limit(tenant, "upload")  # and each action counts apart


def test_the_window_frees_one_request_at_a_time(monkeypatch: pytest.MonkeyPatch, tenant: str, clock: Clock) -> None:
    override(monkeypatch, tenant, upload_rate_per_minute=2)
    start = clock.now
    first = limits.hit_rate_limit(tenant, "upload")
    clock.now = start + 20
    second = limits.hit_rate_limit(tenant, "upload")
    assert (first, second) == (limits.RateFigures(2, 1, 60), limits.RateFigures(2, 0, 40))
    clock.now = start + 60.5  # the first left the window; the second is still in it
    assert limits.hit_rate_limit(tenant, "upload") == limits.RateFigures(2, 0, 20)
    with pytest.raises(TooManyRequests) as refused:
        limits.hit_rate_limit(tenant, "upload")
    assert refused.value.headers is not None and refused.value.headers["Retry-After"] == "20"


def test_headers_on_every_response_of_a_limited_route(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    override(monkeypatch, tenant, submit_rate_per_minute=3)
    remaining = []
    for _ in range(3):
        answered = client.post("/jobs/validate", json=SPEC)
        assert answered.status_code == 200, answered.text  # a report (ok: false: no such dataset)
        assert answered.headers["RateLimit-Limit"] == "3" and answered.headers["RateLimit-Policy"] == "3;w=60"
        assert 1 <= int(answered.headers["RateLimit-Reset"]) <= 60
        remaining.append(int(answered.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    refused = client.post("/jobs/validate", json=SPEC)
    assert refused.status_code == 429 and refused.json()["limit"] == "submit_rate_per_minute", refused.text
    assert refused.headers["RateLimit-Remaining"] == "0" and refused.headers["RateLimit-Limit"] == "3"
    assert int(refused.headers["Retry-After"]) >= int(refused.headers["RateLimit-Reset"]) >= 1
    assert "retry in" in refused.json()["detail"] and "submit_rate_per_minute=3" in refused.json()["detail"]
    assert "RateLimit-Limit" not in client.get("/jobs").headers  # a route without a rate limit says nothing


def test_headers_reach_streamed_bodies_and_errors_raised_later_in_the_route(
    monkeypatch: pytest.MonkeyPatch, tenant: str
) -> None:
    override(monkeypatch, tenant, submit_rate_per_minute=5)
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(limits.RateLimitHeaders)
    app.dependency_overrides[current_caller] = lambda: Caller(key_id="k", tenant=tenant, is_admin=False)

    @app.get("/stream", dependencies=[limits.SubmitRate])
    def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b"]), media_type="text/plain")

    @app.get("/late-error", dependencies=[limits.SubmitRate])
    def late_error() -> None:
        raise Conflict("the job is in the wrong state")

    with TestClient(app) as local:
        streamed, failed = local.get("/stream"), local.get("/late-error")
    assert streamed.text == "ab" and streamed.headers["RateLimit-Remaining"] == "4"
    assert failed.status_code == 409 and failed.headers["RateLimit-Remaining"] == "3"


def test_redis_down_fails_open_without_headers(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    dead = MovingWindowRateLimiter(RedisStorage("redis://127.0.0.1:1/0", socket_connect_timeout=0.2))
    monkeypatch.setattr(limits, "rate_limiter", lambda: dead)
    override(monkeypatch, tenant, submit_rate_per_minute=0)
    assert limits.hit_rate_limit(tenant, "submit") is None  # logged, not refused: the SQL quotas still hold
    answered = client.post("/jobs/validate", json=SPEC)
    assert answered.status_code == 200 and "RateLimit-Limit" not in answered.headers, answered.text


def test_the_schema_declares_the_429_headers(client: TestClient) -> None:
    refused = client.get("/openapi.json").json()["paths"]["/jobs/validate"]["post"]["responses"]["429"]
    assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(refused["headers"])

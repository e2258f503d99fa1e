"""Quotas, bounds and rate limits in-process (migrated SQLite, real Redis), and the body-size middleware."""

import gzip
import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import ValidationError

from app.broker import events
from app.checks.data import ValidationReport
from app.checks.service import check_spec_bounds
from app.core.config import Settings, settings
from app.core.db import SessionLocal
from app.core.errors import TooLarge, TooManyRequests, UnsupportedMediaType
from app.datasets.files import parse_dataset
from app.main import create_app
from app.models import Dataset, Job
from app.spec.job import JobSpec
from app.tenants import limits
from app.tenants.auth import create_key, hash_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"limits-{secrets.token_hex(4)}"


@pytest.fixture
def client(tenant: str) -> Iterator[TestClient]:
    with SessionLocal() as session:
        key = create_key(session, "limits", tenant=tenant)
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False) as c:
        yield c


def override(monkeypatch: pytest.MonkeyPatch, tenant: str, **values: float) -> None:
    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: values})


def add_jobs(tenant: str, status: str, n: int) -> list[str]:
    with SessionLocal() as session:
        jobs = [Job(tenant=tenant, status=status, spec={"base_model": "m", "dataset": "d"}) for _ in range(n)]
        session.add_all(jobs)
        session.commit()
        return [j.id for j in jobs]


def spec(**training: object) -> JobSpec:
    return JobSpec.model_validate({"base_model": "tiny", "dataset": "ds_x", "training": training})


def test_overrides_apply_per_tenant_and_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    override(monkeypatch, tenant, max_running_jobs=7, max_epochs=2.5)
    mine, other = limits.limits_for(tenant), limits.limits_for("someone-else")
    assert mine.max_running_jobs == 7 and mine.max_epochs == 2.5 and isinstance(mine.max_running_jobs, int)
    assert other.max_running_jobs == settings.max_running_jobs
    assert mine.source("max_running_jobs") == f"FT_TENANT_LIMITS[{tenant!r}]"
    assert other.source("max_running_jobs") == "FT_MAX_RUNNING_JOBS"
    with pytest.raises(ValidationError, match="unknown limit"):
        Settings(tenant_limits={"team": {"max_gpus": 3}})


def test_spec_bounds_name_the_field(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    override(monkeypatch, tenant, max_training_steps=100, max_epochs=3, max_seq_length=256, max_lora_rank=16)
    cases = {
        "training.max_steps": spec(max_steps=101),
        "training.epochs": spec(epochs=4),
        "training.max_seq_length": spec(max_seq_length=512),
    }
    for field, job in cases.items():
        report = check_spec_bounds(job, tenant, ValidationReport(ok=True))
        assert not report.ok and report.problems[0].field == field, report
        assert "limit" in report.problems[0].message
    rank = JobSpec.model_validate(
        {"base_model": "tiny", "dataset": "ds_x", "lora": {"r": 32}, "training": {"max_seq_length": 128}}
    )
    assert check_spec_bounds(rank, tenant, ValidationReport(ok=True)).problems[0].field == "lora.r"
    # Epochs within bounds that would still run too many steps are refused too.
    many = check_spec_bounds(spec(epochs=2, max_seq_length=128), tenant, ValidationReport(ok=True, total_steps=500))
    assert many.problems[0].field == "training.epochs" and "500 steps" in many.problems[0].message
    fine = check_spec_bounds(spec(max_steps=100, max_seq_length=128), tenant, ValidationReport(ok=True))
    assert fine.ok


def test_queued_quota_is_429_with_usage_and_retry_after(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    override(monkeypatch, tenant, max_queued_jobs=2)
    add_jobs(tenant, "queued", 1)
    add_jobs(tenant, "running", 3)  # running jobs do not count against the queue
    with SessionLocal() as session:
        limits.check_queued_quota(session, tenant)
    add_jobs(tenant, "queued", 1)
    with SessionLocal() as session, pytest.raises(TooManyRequests) as refused:
        limits.check_queued_quota(session, tenant)
    assert refused.value.extra == {"limit": "max_queued_jobs", "allowed": 2, "usage": 2}
    assert refused.value.headers == {"Retry-After": str(limits.QUEUE_RETRY_AFTER_S)}
    assert "2 queued jobs" in refused.value.detail and "max_queued_jobs=2" in refused.value.detail


def test_storage_quota_counts_the_tenants_datasets(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    override(monkeypatch, tenant, max_dataset_storage_bytes=1000)
    with SessionLocal() as session:
        session.add(
            Dataset(
                tenant=tenant, name="a", filename="a", format="jsonl", rows=1, columns=[], size_bytes=600, sha256="x"
            )
        )
        session.commit()
        limits.check_storage_quota(session, tenant, 400)
        with pytest.raises(TooManyRequests) as refused:
            limits.check_storage_quota(session, tenant, 401)
    assert refused.value.extra["usage"] == 600 and refused.value.headers is None


def test_rate_limit_counts_per_tenant_in_redis(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    override(monkeypatch, tenant, submit_rate_per_minute=3)
    for _ in range(3):
        limits.hit_rate_limit(tenant, "submit")
    limits.hit_rate_limit(f"{tenant}-other", "submit")  # another tenant has its own count
    with pytest.raises(TooManyRequests) as refused:
        limits.hit_rate_limit(tenant, "submit")
    assert refused.value.headers is not None and 59 <= int(refused.value.headers["Retry-After"]) <= 60
    assert refused.value.extra["limit"] == "submit_rate_per_minute"
    limits.hit_rate_limit(tenant, "upload")  # each action counts apart (the window itself: test_rate_headers.py)


def test_rate_limit_fails_open_without_redis(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    dead = MovingWindowRateLimiter(RedisStorage("redis://127.0.0.1:1/0", socket_connect_timeout=0.2))
    monkeypatch.setattr(limits, "rate_limiter", lambda: dead)
    override(monkeypatch, tenant, submit_rate_per_minute=0)
    limits.hit_rate_limit(tenant, "submit")  # logged, not refused: the SQL quotas still hold


def test_a_tenant_at_its_running_limit_waits(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    override(monkeypatch, tenant, max_running_jobs=1)
    (waiting,) = add_jobs(tenant, "queued", 1)
    (other,) = add_jobs(f"{tenant}-b", "queued", 1)
    with SessionLocal() as session:
        assert not limits.defer_if_tenant_busy(session, waiting), "nothing runs yet: it may start"
    add_jobs(tenant, "running", 1)
    with SessionLocal() as session:
        session.execute(Job.__table__.update().where(Job.id == waiting).values(enqueued_at=Job.created_at))
        session.commit()
        assert limits.defer_if_tenant_busy(session, waiting)
        assert not limits.defer_if_tenant_busy(session, other), "another tenant is not held back"
    with SessionLocal() as session:
        job = session.get(Job, waiting)
        assert job.status == "queued" and job.enqueued_at is None, "left for the reconciler to send again"


def test_submit_over_quota_is_429_over_http(monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient) -> None:
    override(monkeypatch, tenant, max_queued_jobs=0)
    refused = client.post("/jobs", json={"base_model": "tiny", "dataset": "ds_000000000000000000000000"})
    assert refused.status_code == 429 and refused.json()["limit"] == "max_queued_jobs", refused.text
    assert refused.headers["retry-after"] == str(limits.QUEUE_RETRY_AFTER_S)
    mine = client.get("/limits").json()
    assert mine["tenant"] == tenant and mine["limits"]["max_queued_jobs"] == 0


def test_uploads_over_the_storage_quota_are_429(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    override(monkeypatch, tenant, max_dataset_storage_bytes=100)
    small = client.post("/datasets", files={"file": ("a.jsonl", b'{"text": "hello"}\n')})
    assert small.status_code == 201
    big = client.post("/datasets", files={"file": ("b.jsonl", b'{"text": "' + b"x" * 100 + b'"}\n')})
    assert big.status_code == 429 and big.json()["usage"] == small.json()["size_bytes"], big.text
    assert "retry-after" not in big.headers, "waiting does not free storage"


def test_body_size_limit_is_413_before_the_body_is_read(monkeypatch: pytest.MonkeyPatch, client: TestClient) -> None:
    monkeypatch.setattr(settings, "max_request_body_bytes", 2048)
    body = json.dumps({"base_model": "tiny", "dataset": "ds_x", "name": "x" * 4000})
    declared = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "FT_MAX_REQUEST_BODY_BYTES" in declared.json()["detail"]
    chunked = client.post("/jobs", content=iter([body[:1000].encode(), body[1000:].encode()]))
    assert chunked.status_code == 413, chunked.text
    openai = client.post("/v1/fine_tuning/jobs", content=body, headers={"content-type": "application/json"})
    assert openai.status_code == 413 and openai.json()["error"]["code"] == "file_too_large"


def test_compressed_request_bodies_are_415(client: TestClient) -> None:
    bomb = gzip.compress(b"{" + b" " * 10_000_000 + b"}")
    response = client.post(
        "/jobs", content=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert response.status_code == 415 and "uncompressed" in response.json()["detail"]


def test_compressed_uploads_are_refused_not_unpacked() -> None:
    bomb = gzip.compress(b'{"text": "a"}\n' * 1_000_000)  # 14 MB of rows in a few kilobytes
    assert len(bomb) < 100_000
    for filename in ("rows.jsonl.gz", "rows.jsonl", "rows"):
        with pytest.raises(UnsupportedMediaType, match="compressed"):
            parse_dataset(filename, bomb)


def test_a_parquet_bomb_is_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "max_upload_bytes", 10_000_000)
    rows = [{"text": "0" * 1_000_000} for _ in range(50)]  # 50 MB decoded, a few kB compressed
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, compression="zstd", use_dictionary=False)
    assert len(buffer.getvalue()) < 200_000
    with pytest.raises(TooLarge, match="decoded"):
        parse_dataset("bomb.parquet", buffer.getvalue())


def test_openapi_declares_errors_and_auth_on_every_operation() -> None:
    schema = create_app().openapi()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path in ("/healthz", "/readyz"):
                assert "security" not in operation
                continue
            codes = set(operation["responses"])
            assert "401" in codes and operation["security"] == [{"bearerAuth": []}], (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            for code in (c for c in codes if c.isdigit() and int(c) >= 400):
                openai = path.startswith("/v1/")  # OpenAI's error shape; elsewhere RFC 9457 problem details
                media = "application/json" if openai else "application/problem+json"
                content = operation["responses"][code]["content"][media]["schema"]
                required = ["error"] if openai else ["type", "title", "status", "detail", "instance"]
                assert content["required"] == required, (path, code)
    assert "429" in schema["paths"]["/jobs"]["post"]["responses"]
    assert "429" in schema["paths"]["/datasets"]["post"]["responses"]


def test_rate_limit_keys_expire(tenant: str) -> None:
    client = events.redis_client()
    limits.hit_rate_limit(tenant, "upload")
    keys = list(client.scan_iter(f"ft:rate:LIMITER/upload/{tenant}/*"))
    assert keys and all(0 < client.ttl(k) <= limits.RATE_WINDOW_S for k in keys)


def test_no_key_hash_leaves_the_admin_api(tenant: str) -> None:
    with SessionLocal() as session:
        admin_key = create_key(session, "root", tenant=tenant, is_admin=True)
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        made = admin.post("/admin/keys", json={"name": "ci", "tenant": tenant}).json()
        assert made["key"].startswith(made["prefix"])
        listed = admin.get("/admin/keys", params={"tenant": tenant}).text
        assert made["key"] not in listed and hash_key(made["key"]) not in listed and "hash" not in listed

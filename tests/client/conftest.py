"""The client against the real API: a uvicorn in-process (tests/inprocess_server.py), migrated SQLite, real Redis."""

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from alembic.config import Config

from app.broker import events
from app.core.config import settings
from app.core.db import SessionLocal
from app.models import Artifact, Job
from app.storage import job_dir, relative, sha256_file
from app.tenants.auth import create_key
from tests.inprocess_server import serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"client-{secrets.token_hex(4)}"


@pytest.fixture
def key(tenant: str) -> str:
    with SessionLocal() as session:
        key = create_key(session, "client", tenant=tenant)
        session.commit()
    return key


@pytest.fixture
def queues(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tasks go to the real broker, on queues of this test's own that no worker reads; emptied afterwards."""
    name = f"client-tests-{secrets.token_hex(4)}"
    monkeypatch.setattr(settings, "training_queue", f"{name}-training")
    monkeypatch.setattr(settings, "inference_queue", f"{name}-inference")
    yield
    client = redis.Redis.from_url(settings.redis_url)
    for found in client.scan_iter(match=f"{name}*"):
        client.delete(found)


@pytest.fixture
def base_url() -> Iterator[str]:
    with serving() as url:
        yield url


def add_job(tenant: str, status: str = "running", **fields: Any) -> str:
    with SessionLocal() as session:
        job = Job(tenant=tenant, status=status, spec={"base_model": "m", "dataset": "d"}, **fields)
        session.add(job)
        session.commit()
        return job.id


def set_job(job_id: str, **fields: Any) -> None:
    with SessionLocal() as session:
        job = session.get(Job, job_id)
        for name, value in fields.items():
            setattr(job, name, value)
        session.commit()


def add_adapter(job_id: str, content: bytes, sha256: str | None = None) -> str:
    """A stored adapter archive and its record; `sha256` overrides the real hash (a record that lies)."""
    archive = job_dir(job_id) / "adapter.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(content)
    recorded = sha256 or sha256_file(archive)
    with SessionLocal() as session:
        path, size = relative(archive), len(content)
        session.add(
            Artifact(job_id=job_id, name="adapter", kind="adapter", path=path, size_bytes=size, sha256=recorded)
        )
        session.commit()
    return recorded


def publish(job_id: str, kind: str, **data: Any) -> str:
    return events.publish(job_id, kind, data)

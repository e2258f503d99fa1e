"""One running stack per database (SQLite, PostgreSQL), shared by all integration tests of a session."""

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from ftctl.localstack import LocalStack, free_port
from tests.conftest import MODELS_DIR

POSTGRES_ADMIN_URL = os.environ.get("FT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FT_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
TERMINAL = {"succeeded", "failed", "cancelled"}
# The stack runs on both databases for what the database shapes (records, API contract, cleanup, tenancy); tests of
# behaviour above it (training, streaming, the demos, fuzzing) run once, on PostgreSQL, production's database:
# `pytestmark = ONE_DATABASE` in a module, or the decorator on a test.
ONE_DATABASE = pytest.mark.one_database


@dataclass
class Stack:
    name: str
    local: LocalStack
    key: str
    client: httpx.Client

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.local.base_url, timeout=30)

    def make_key(self, name: str, tenant: str | None = None) -> str:
        argv = [sys.executable, "-m", "ftctl.main", "keys", "create", name, *(["--tenant", tenant] if tenant else [])]
        out = subprocess.run(argv, env=self.local.env, check=True, capture_output=True, text=True)
        return out.stdout.strip().splitlines()[-1]

    def client_for(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.local.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def wait(self, job_id: str, timeout: float = 300, until: set[str] = TERMINAL) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job["status"] in until:
                return job
            time.sleep(0.3)
        logs = (self.local.log_dir / "worker.log").read_text()[-4000:]
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s; worker log tail:\n{logs}")

    def upload(self, filename: str, content: bytes, name: str | None = None) -> dict:
        response = self.client.post("/datasets", files={"file": (filename, content)}, data={"name": name or filename})
        assert response.status_code in (200, 201), response.text
        return response.json()


@contextmanager
def private_stack(
    name: str, root: Path, env: dict[str, str], worker: bool = False, inference: bool = False
) -> Iterator[Stack]:
    """A stack of its own for tests that kill, restart or reconfigure processes: its own redis-server and the API,
    and the workers asked for (the tests start the others themselves). `env`: the whole environment."""
    local = LocalStack(env=env, log_dir=root / "logs")
    local.log_dir.mkdir(parents=True, exist_ok=True)
    local.start_redis(free_port())
    local.start(worker=worker, inference=inference)
    stack = Stack(name, local, "", None)  # type: ignore[arg-type]
    stack.key = stack.make_key(name)
    stack.client = stack.client_for(stack.key)
    try:
        yield stack
    finally:
        local.stop()


def _create_database(name: str) -> str:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def _drop_database(name: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tiny_model: Path, session_dir: Path) -> Iterator[Stack]:
    """The real processes: migrations, uvicorn and a Celery worker, against a real Redis and database."""
    backend = request.param
    root = session_dir / backend
    suffix = secrets.token_hex(4)
    env = {
        **os.environ,
        "FT_DATA_DIR": str(root / "data"),
        "FT_MODELS_DIR": str(MODELS_DIR),
        "FT_REDIS_URL": REDIS_URL,
        "FT_TRAINING_QUEUE": f"training-test-{suffix}",
        "FT_INFERENCE_QUEUE": f"inference-test-{suffix}",  # predict, generate, exports: their own worker
        "FT_EGRESS_ALLOW": "127.0.0.0/8",  # the webhook receivers of the tests listen on loopback
    }
    db_name = f"ft_test_{suffix}"
    if backend == "postgresql":
        env["FT_DATABASE_URL"] = _create_database(db_name)
    else:
        env.pop("FT_DATABASE_URL", None)
    local = LocalStack(env=env, log_dir=root / "logs")
    try:
        local.start(inference=True)
        probe = Stack(backend, local, "", httpx.Client())
        key = probe.make_key("tests")
        client = probe.client_for(key)
        yield Stack(backend, local, key, client)
        client.close()
    finally:
        local.stop()
        if backend == "postgresql":
            _drop_database(db_name)

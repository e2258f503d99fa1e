"""Extra API replicas beside a test stack: same database and Redis, their own limits, and a queue no one works.

Jobs submitted through one stay queued (no worker reads its queue), so quota and fuzz tests never load the
shared training worker; the replicas' reconcilers are off for the same reason.
"""

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.models import Job, utcnow
from ftctl.localstack import LocalStack
from tests.integration.conftest import Stack


class TracedApi(LocalStack):
    """An API process logging at uvicorn's most verbose level: access lines and every ASGI message."""

    def start_api(self) -> None:
        argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.api_port)]
        self._spawn("api", [*argv, "--log-level", "trace", "--access-log"])
        self.wait_ready()


def stack_database_url(stack: Stack) -> str:
    env = stack.local.env
    return env.get("FT_DATABASE_URL") or f"sqlite:///{Path(env['FT_DATA_DIR']).resolve() / 'finetune.db'}"


@contextmanager
def replicas(stack: Stack, count: int, tenant_limits: dict, **settings: str) -> Iterator[list[LocalStack]]:
    """`count` more API processes on the stack's database and Redis, with these FT_TENANT_LIMITS and FT_* settings."""
    queue = f"training-unworked-{secrets.token_hex(4)}"
    env = {
        **stack.local.env,
        "FT_TRAINING_QUEUE": queue,
        "FT_RECONCILE_EVERY_SECONDS": "0",
        "FT_TENANT_LIMITS": json.dumps(tenant_limits),
        **{f"FT_{name.upper()}": value for name, value in settings.items()},
    }
    started: list[LocalStack] = []
    try:
        for i in range(count):
            log_dir = stack.local.log_dir.parent / f"replica-{queue}-{i}"
            started.append(TracedApi(env=dict(env), log_dir=log_dir).start(worker=False))
        yield started
    finally:
        for replica in started:
            replica.stop()
        redis.Redis.from_url(env["FT_REDIS_URL"]).delete(queue)


def cancel_queued(stack: Stack, tenants: list[str]) -> None:
    """End what these tenants left queued, so nothing they submitted is ever trained or counted again."""
    engine = make_engine(stack_database_url(stack))
    with Session(engine) as session:
        session.execute(
            update(Job)
            .where(Job.tenant.in_(tenants), Job.status == "queued")
            .values(status="cancelled", finished_at=utcnow())
        )
        session.commit()
    engine.dispose()


def ftctl(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    """`ftctl ...` against the stack's database, as an operator runs it."""
    argv = [sys.executable, "-m", "ftctl.main", *args]
    return subprocess.run(argv, env=stack.local.env, check=True, capture_output=True, text=True)

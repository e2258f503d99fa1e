"""Queue positions of a page (GET /jobs) computed per line and priority agree with each job counted alone.

Migrated SQLite in-process; one tenant's queued jobs in two queues at three priorities, mixed with finished ones and
another tenant's, listed in pages of several sizes with and without the status filter.
"""

import random
import secrets
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event

from app.core.db import SessionLocal, engine
from app.jobs import service as jobs_service
from app.models import Job, utcnow
from app.tenants.auth import Caller

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tenant() -> str:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
    tenant, rng, now = f"positions-{secrets.token_hex(4)}", random.Random(7), utcnow()
    with SessionLocal() as session:
        for i in range(120):
            status = rng.choice(("queued", "queued", "queued", "succeeded", "running"))
            session.add(
                Job(
                    tenant=rng.choice((tenant, tenant, tenant, "someone-else")),
                    status=status,
                    spec={"base_model": "m", "dataset": "d"},
                    queue=rng.choice(("training", "training", "training.g2")),
                    priority=rng.choice((0, 0, 3, 9)),
                    created_at=now + timedelta(seconds=i // 3),  # ties on created_at: the id decides
                )
            )
        session.commit()
    return tenant


@pytest.mark.parametrize("status", [None, "queued"])
@pytest.mark.parametrize("limit", [1, 7, 50])
def test_a_pages_positions_are_each_jobs_own_count(tenant: str, status: str | None, limit: int) -> None:
    caller, cursor, seen = Caller("k", tenant, False), None, 0
    with SessionLocal() as session:
        while True:
            jobs, cursor = jobs_service.list_jobs(session, caller, status, limit, cursor)
            positions = jobs_service.queue_positions(session, jobs)
            alone = {j.id: jobs_service.queue_position(session, j) for j in jobs if j.status == "queued"}
            assert positions == alone
            seen += len(jobs)
            if cursor is None:
                break
    assert seen > 0


def test_a_list_that_is_no_run_of_the_line_is_counted_job_by_job(tenant: str) -> None:
    with SessionLocal() as session:
        jobs, _ = jobs_service.list_jobs(session, Caller("k", tenant, False), "queued", 60, None)
        sparse = jobs[::3]  # gaps in every line: the shortcut must notice and count each alone
        assert jobs_service.queue_positions(session, sparse) == {
            j.id: jobs_service.queue_position(session, j) for j in sparse
        }


def test_a_page_costs_a_few_queries_per_line_not_two_per_job(tenant: str) -> None:
    statements: list[str] = []

    def note(*args: object) -> None:
        statements.append(str(args[2]))

    with SessionLocal() as session:
        jobs, _ = jobs_service.list_jobs(session, Caller("k", tenant, False), "queued", 50, None)
        event.listen(engine, "before_cursor_execute", note)
        try:
            jobs_service.queue_positions(session, jobs)
        finally:
            event.remove(engine, "before_cursor_execute", note)
    groups = {(j.queue, j.priority) for j in jobs}
    lines = {j.queue for j in jobs}
    assert len(statements) <= len(lines) + 2 * len(groups) < len(jobs), statements

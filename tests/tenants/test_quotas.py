"""Artifact quotas, checkpoint and priority bounds, tenant-only queue positions and paged artifact lists, in-process
(migrated SQLite, real Redis)."""

import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app.checks.data import ValidationReport
from app.checks.service import check_spec_bounds
from app.core.config import settings
from app.core.db import SessionLocal
from app.models import Artifact, Job, utcnow
from app.spec.job import JobSpec
from app.tenants import quotas
from app.tenants.auth import create_key

ROOT = Path(__file__).resolve().parents[2]
NO_DATASET = "ds_000000000000000000000000"


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"quotas-{secrets.token_hex(4)}"


def client_for(tenant: str) -> TestClient:
    from app.main import create_app

    with SessionLocal() as session:
        key = create_key(session, "quotas", tenant=tenant)
        session.commit()
    return TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)


@pytest.fixture
def client(tenant: str) -> Iterator[TestClient]:
    with client_for(tenant) as c:
        yield c


def override(monkeypatch: pytest.MonkeyPatch, tenant: str, **values: float) -> None:
    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: values})


def add_job(tenant: str, status: str = "succeeded", artifacts: dict[str, int] | None = None, **fields: object) -> str:
    """A job row with artifact rows (name -> size; `checkpoint-N` ones are checkpoints), created a second apart."""
    with SessionLocal() as session:
        job = Job(tenant=tenant, status=status, spec={"base_model": "m", "dataset": "d"}, **fields)
        session.add(job)
        session.flush()
        start = utcnow()
        for i, (name, size) in enumerate((artifacts or {}).items()):
            kind = "checkpoint" if name.startswith("checkpoint-") else "adapter"
            step = int(name.split("-")[1]) if kind == "checkpoint" else None
            path = f"jobs/{job.id}/{name}.tar.gz"
            created = start + timedelta(seconds=i)
            row = Artifact(job_id=job.id, name=name, kind=kind, path=path, size_bytes=size, sha256="0" * 64, step=step)
            row.created_at = created
            session.add(row)
        session.commit()
        return job.id


def spec(priority: int = 0, **training: object) -> JobSpec:
    return JobSpec.model_validate({"base_model": "tiny", "dataset": "ds_x", "priority": priority, "training": training})


# --- artifact storage ---


def test_artifact_quota_refuses_submit_and_export_until_space_is_freed(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    override(monkeypatch, tenant, max_artifact_storage_bytes=1000)
    full = add_job(tenant, artifacts={"checkpoint-10": 400, "adapter": 600})
    add_job(f"{tenant}-other", artifacts={"adapter": 10_000})  # another tenant's bytes are not counted
    with SessionLocal() as session:
        assert quotas.artifact_bytes(session, tenant) == 1000
    assert client.get("/limits").json()["usage"]["artifact_bytes"] == 1000, "GET /limits shows it beside the limit"

    refused = client.post("/jobs", json={"base_model": "tiny", "dataset": NO_DATASET})
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert (body["limit"], body["allowed"], body["usage"]) == ("max_artifact_storage_bytes", 1000, 1000)
    assert "DELETE /jobs/{id}" in body["detail"] and f"FT_TENANT_LIMITS[{tenant!r}]" in body["detail"]
    assert "retry-after" not in refused.headers, "waiting frees nothing; deleting does"
    export = client.post(f"/jobs/{full}/exports", json={"kind": "merged"})
    assert export.status_code == 429 and export.json()["limit"] == "max_artifact_storage_bytes", export.text

    assert client.delete(f"/jobs/{full}?keep_metrics=true").status_code == 200
    freed = client.post("/jobs", json={"base_model": "tiny", "dataset": NO_DATASET})
    assert freed.status_code == 422 and NO_DATASET in freed.text, "past the quota, on to the spec's own checks"


def test_the_artifact_quota_of_a_tenant_under_it_lets_work_through(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    override(monkeypatch, tenant, max_artifact_storage_bytes=1000)
    add_job(tenant, artifacts={"adapter": 999})
    under = client.post("/jobs", json={"base_model": "tiny", "dataset": NO_DATASET})
    assert under.status_code == 422, under.text


# --- bounds on the spec ---


def test_checkpoint_every_steps_is_bounded_by_max_checkpoints_per_job(
    monkeypatch: pytest.MonkeyPatch, tenant: str
) -> None:
    def problems(job: JobSpec, total_steps: int | None = None) -> list:
        report = check_spec_bounds(job, tenant, ValidationReport(ok=True, total_steps=total_steps))
        return [p for p in report.problems if p.field == "training.checkpoint_every_steps"]

    every_step = problems(spec(max_steps=1000, checkpoint_every_steps=1))
    assert len(every_step) == 1, "one archive a step, 1,000 of them, is over the default of 50"
    message = every_step[0].message
    assert "1,000 checkpoints" in message and "max_checkpoints_per_job" in message and "20 or more" in message
    assert not problems(spec(max_steps=1000, checkpoint_every_steps=20)), "1000 // 20 = 50: allowed"
    assert problems(spec(max_steps=1000, checkpoint_every_steps=19))
    assert not problems(spec(max_steps=1000, checkpoint_every_steps=None))

    # Without max_steps, the steps the epochs run (as the data checks counted them) are used.
    assert "10 or more" in problems(spec(checkpoint_every_steps=5), total_steps=500)[0].message
    assert not problems(spec(checkpoint_every_steps=5), total_steps=None), "steps unknown here: the quota bounds it"

    override(monkeypatch, tenant, max_checkpoints_per_job=4)
    tight = problems(spec(max_steps=100, checkpoint_every_steps=20))
    assert tight and f"FT_TENANT_LIMITS[{tenant!r}]" in tight[0].message and "21 or more" in tight[0].message
    assert not problems(spec(max_steps=100, checkpoint_every_steps=21))


def test_priority_above_the_tenants_cap_is_refused(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    assert check_spec_bounds(spec(priority=9, max_steps=10), tenant, ValidationReport(ok=True)).ok
    override(monkeypatch, tenant, max_priority=3)
    report = check_spec_bounds(spec(priority=5, max_steps=10), tenant, ValidationReport(ok=True))
    assert [p.field for p in report.problems] == ["priority"], report
    assert "max_priority" in report.problems[0].message and "3 or lower" in report.problems[0].message
    assert check_spec_bounds(spec(priority=3, max_steps=10), tenant, ValidationReport(ok=True)).ok


def test_a_submit_over_the_priority_cap_is_422_naming_it(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    override(monkeypatch, tenant, max_priority=0)
    refused = client.post("/jobs", json={"base_model": "tiny", "dataset": NO_DATASET, "priority": 1})
    assert refused.status_code == 422
    assert any(p["field"] == "priority" for p in refused.json()["problems"]), refused.text


# --- queue positions ---


def test_queue_positions_count_only_the_tenants_own_jobs(tenant: str, client: TestClient) -> None:
    queue, earlier = f"q-{secrets.token_hex(4)}", utcnow() - timedelta(minutes=5)
    for _ in range(3):  # ahead of ours in the shared queue: older, higher priority, someone else's
        add_job(f"{tenant}-other", status="queued", queue=queue, priority=9, created_at=earlier)
    older = add_job(tenant, status="queued", queue=queue, priority=0, created_at=earlier)
    mine = add_job(tenant, status="queued", queue=queue, priority=0)
    assert client.get(f"/jobs/{older}").json()["queue_position"] == 1
    assert client.get(f"/jobs/{mine}").json()["queue_position"] == 2, "the other tenant's three are not counted"
    listed = {j["id"]: j["queue_position"] for j in client.get("/jobs").json()["data"]}
    assert listed == {older: 1, mine: 2}


# --- paged artifact lists ---


def test_artifact_lists_are_paged_with_a_cursor(tenant: str, client: TestClient) -> None:
    names = [f"checkpoint-{step}" for step in (10, 20, 30, 40, 50)] + ["adapter"]
    job = add_job(tenant, artifacts=dict.fromkeys(names, 1))

    whole = client.get(f"/jobs/{job}/artifacts").json()
    assert [a["name"] for a in whole["data"]] == names and whole["next_cursor"] is None, "the old shape, one page"

    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/jobs/{job}/artifacts", params=params).json()
        assert len(page["data"]) <= 2
        seen += [a["name"] for a in page["data"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == names

    first = client.get(f"/jobs/{job}/checkpoints", params={"limit": 4}).json()
    rest = client.get(f"/jobs/{job}/checkpoints", params={"limit": 4, "cursor": first["next_cursor"]}).json()
    assert [a["name"] for a in first["data"] + rest["data"]] == names[:5] and rest["next_cursor"] is None

    assert client.get(f"/jobs/{job}/artifacts", params={"limit": 1001}).status_code == 422
    bad = client.get(f"/jobs/{job}/artifacts", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and "next_cursor" in bad.json()["detail"]

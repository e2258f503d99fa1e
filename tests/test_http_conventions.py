"""HTTP as generic clients expect it (in-process: migrated SQLite, real Redis): RFC 9457 problem details, Location
on 201/202, ETag with If-None-Match -> 304, Link to the next page, real cursors, and Idempotency-Key checked
against the body it was first sent with."""

import json
import re
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from alembic.config import Config
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from app.core.config import settings
from app.core.db import SessionLocal
from app.core.errors import PROBLEM_BASE
from app.jobs import service as jobs_service
from app.main import create_app
from app.models import Artifact, Evaluation, Export, Job, utcnow
from app.tenants.auth import create_key
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"http-{secrets.token_hex(4)}"


@pytest.fixture
def queues(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tasks go to the real broker, on queues of this test's own that no worker reads; emptied afterwards."""
    name = f"http-conventions-{secrets.token_hex(4)}"
    monkeypatch.setattr(settings, "training_queue", f"{name}-training")
    monkeypatch.setattr(settings, "inference_queue", f"{name}-inference")
    yield
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{name}*"):
        client.delete(key)


def client_for(tenant: str, is_admin: bool = False) -> TestClient:
    with SessionLocal() as session:
        key = create_key(session, "http", tenant=tenant, is_admin=is_admin)
        session.commit()
    return TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)


@pytest.fixture
def client(tenant: str) -> Iterator[TestClient]:
    with client_for(tenant) as c:
        yield c


def add_job(tenant: str, status: str = "succeeded", **fields: Any) -> str:
    with SessionLocal() as session:
        job = Job(tenant=tenant, status=status, spec={"base_model": "m", "dataset": "d"}, **fields)
        session.add(job)
        session.commit()
        return job.id


def assert_problem(response: Any, status: int, kind: str, path: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM, response.headers
    body = response.json()
    assert body["type"] == (kind if kind == "about:blank" else PROBLEM_BASE + kind), body
    assert body["status"] == status and body["title"] and body["instance"] == path, body
    assert isinstance(body["detail"], str) and body["detail"], body
    return body


# --- problem details ---


def test_errors_are_problem_details_keeping_todays_fields(
    monkeypatch: pytest.MonkeyPatch, tenant: str, client: TestClient
) -> None:
    missing = assert_problem(client.get("/jobs/job_nope"), 404, "not-found", "/jobs/job_nope")
    assert "GET /jobs" in missing["detail"], "detail stays the readable, actionable string"

    invalid = assert_problem(
        client.post("/jobs", json={"base_model": "m", "bogus": 1}), 422, "invalid-request", "/jobs"
    )
    assert "bogus" in [p["field"] for p in invalid["problems"]], "problems stays, a field a row"
    assert "dataset" in invalid["detail"] and "bogus" in invalid["detail"]

    assert "/docs" in assert_problem(client.get("/nowhere"), 404, "not-found", "/nowhere")["detail"]
    wrong_method = assert_problem(client.put("/jobs"), 405, "method-not-allowed", "/jobs")
    assert "PUT" in wrong_method["detail"] and "GET" in wrong_method["detail"], wrong_method

    openai = client.get("/v1/fine_tuning/jobs/ftjob-nope")  # /v1 keeps OpenAI's shape, which its SDK reads
    assert openai.status_code == 404 and openai.headers["content-type"] == "application/json"
    assert set(openai.json()) == {"error"} and openai.json()["error"]["message"]

    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: {"max_queued_jobs": 1}})
    add_job(tenant, status="queued")
    refused = client.post("/jobs", json={"base_model": "m", "dataset": "d"})
    limited = assert_problem(refused, 429, "limit-reached", "/jobs")
    assert (limited["limit"], limited["allowed"], limited["usage"]) == ("max_queued_jobs", 1, 1)
    assert "retry-after" in refused.headers, "the error's headers stay"

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(jobs_service, "read_job", broken)  # what GET /jobs/{id} reads the job with
    assert "try again" in assert_problem(client.get("/jobs/job_x"), 500, "about:blank", "/jobs/job_x")["detail"]


def test_errors_answered_before_any_route_are_problems_too(client: TestClient) -> None:
    with TestClient(create_app()) as anonymous:
        no_key = anonymous.post("/jobs", json={"base_model": "m", "dataset": "d"})
    assert_problem(no_key, 401, "unauthorized", "/jobs")
    packed = client.post("/jobs", content=b"x", headers={"Content-Encoding": "gzip"})
    assert_problem(packed, 415, "unsupported-media-type", "/jobs")


def test_the_schema_declares_problem_json_outside_v1(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    declared = paths["/jobs/{job_id}"]["get"]["responses"]["404"]["content"]
    assert set(declared) == {PROBLEM}
    assert {"type", "title", "status", "detail", "instance"} <= set(declared[PROBLEM]["schema"]["required"])
    assert "application/json" in paths["/v1/models"]["get"]["responses"]["401"]["content"]
    assert "304" in paths["/jobs/{job_id}"]["get"]["responses"]


# --- Location ---

CREATING_ROUTES = {
    ("POST", "/datasets"),
    ("POST", "/jobs"),
    ("POST", "/jobs/{job_id}/clone"),
    ("POST", "/jobs/{job_id}/exports"),
    ("POST", "/jobs/{job_id}/evaluations"),
    ("POST", "/jobs/{job_id}/generate"),
    ("POST", "/admin/keys"),
    ("POST", "/admin/tenants/{tenant}/webhook-secret"),
}


def upload(client: TestClient, text: str) -> Any:
    rows = "".join(json.dumps({"text": f"{text} {i}"}) + "\n" for i in range(4)).encode()
    return client.post("/datasets", files={"file": (f"{text}.jsonl", rows)})


def test_location_on_every_201_and_202(tenant: str, client: TestClient, tiny_model: Path, queues: None) -> None:
    found = {
        (method, route.path)
        for route in iter_route_contexts(create_app().routes)
        if getattr(route, "status_code", None) in (201, 202) or 202 in (getattr(route, "responses", None) or {})
        for method in route.methods or ()
    }
    assert found == CREATING_ROUTES, "a new 201/202 route needs its Location (and its lines below)"

    uploaded = upload(client, "located")
    assert (
        uploaded.status_code == 201 and client.get(uploaded.headers["location"]).json()["id"] == uploaded.json()["id"]
    )
    assert "location" not in upload(client, "located").headers, "the same file again is a 200, nothing created"

    spec = {"base_model": TINY_MODEL, "dataset": uploaded.json()["id"], "format": {"type": "text", "field": "text"}}
    job = client.post("/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert job.headers["location"] == f"http://testserver/jobs/{job.json()['id']}"
    clone = client.post(f"/jobs/{job.json()['id']}/clone", json={"training": {"seed": 7}})
    assert clone.status_code == 201 and client.get(clone.headers["location"]).json()["id"] == clone.json()["id"]

    with SessionLocal() as session:
        session.get(Job, job.json()["id"]).status = "succeeded"
        session.commit()
    export = client.post(f"/jobs/{job.json()['id']}/exports", json={"kind": "merged"})
    assert export.status_code == 202 and client.get(export.headers["location"]).json()["id"] == export.json()["id"]
    evaluation = client.post(f"/jobs/{job.json()['id']}/evaluations", json={"dataset": uploaded.json()["id"]})
    assert evaluation.status_code == 202, evaluation.text
    assert evaluation.headers["location"] == "http://testserver" + evaluation.json()["poll_url"]
    generation = client.post(f"/jobs/{job.json()['id']}/generate?wait=false", json={"prompts": ["hi"]})
    assert generation.status_code == 202 and generation.headers["location"] == generation.json()["poll_url"]

    with client_for(f"{tenant}-admin", is_admin=True) as admin:
        key = admin.post("/admin/keys", json={"name": "located", "tenant": tenant})
        assert key.status_code == 201 and admin.get(key.headers["location"]).json()["id"] == key.json()["id"]
        secret = admin.post(f"/admin/tenants/{tenant}/webhook-secret")
        assert secret.status_code == 201 and admin.get(secret.headers["location"]).json()["is_set"] is True


# --- ETag and 304 ---


def assert_revalidates(client: TestClient, url: str) -> str:
    first = client.get(url)
    etag = first.headers["etag"]
    assert first.status_code == 200 and re.fullmatch(r'"[0-9a-f]{32}"', etag), first.headers
    assert "no-cache" in first.headers["cache-control"]
    for sent in (etag, f'"other", W/{etag}', "*"):
        again = client.get(url, headers={"If-None-Match": sent})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag, sent
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    return etag


def test_etag_and_304_on_what_the_dashboard_polls(tenant: str, client: TestClient) -> None:
    job_id = add_job(tenant, status="running")
    with SessionLocal() as session:
        session.add(Artifact(job_id=job_id, name="checkpoint-5", kind="checkpoint", path="x", size_bytes=1, sha256="0"))
        session.commit()
    urls = [f"/jobs/{job_id}", f"/jobs/{job_id}/metrics", f"/jobs/{job_id}/artifacts", f"/jobs/{job_id}/checkpoints"]
    before = {url: assert_revalidates(client, url) for url in urls}
    assert_revalidates(client, f"/jobs/{job_id}/metrics?format=csv")

    with SessionLocal() as session:
        session.get(Job, job_id).status = "succeeded"  # every body above shows the status or the artifacts' job
        session.add(Artifact(job_id=job_id, name="checkpoint-9", kind="checkpoint", path="y", size_bytes=1, sha256="0"))
        session.commit()
    for url, etag in before.items():
        changed = client.get(url, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag, url


# --- Link and cursors ---


def walk(client: TestClient, url: str) -> list[str]:
    """Every id a list shows, following `Link: rel="next"` and checking it agrees with next_cursor."""
    ids: list[str] = []
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        body = page.json()
        ids += [row.get("id") or row.get("name") for row in body["data"]]
        link = page.headers.get("link")
        assert (link is None) == (body["next_cursor"] is None), (link, body["next_cursor"])
        url = re.fullmatch(r'<(http://testserver/[^>]+)>; rel="next"', link).group(1) if link else ""
        assert not url or "limit=2" in url, "the next page keeps the query"
    return ids


def test_every_cursor_list_pages_with_link(tenant: str, client: TestClient) -> None:
    datasets = [upload(client, f"paged-{i}").json()["id"] for i in range(5)]
    assert walk(client, "/datasets?limit=2") == datasets[::-1], "newest first, none repeated, none missed"

    jobs = [add_job(tenant) for _ in range(3)]
    assert walk(client, "/jobs?limit=2") == jobs[::-1]
    start = utcnow()
    with SessionLocal() as session:
        rows: list[Any] = []
        for i in range(3):
            rows.append(Artifact(job_id=jobs[0], name=f"checkpoint-{i}", kind="checkpoint", path="p", size_bytes=1))
            rows[-1].sha256 = "0"
            rows += [Export(job_id=jobs[0], kind="merged"), Evaluation(job_id=jobs[0], options={})]
        for i, row in enumerate(rows):
            row.created_at = start + timedelta(seconds=i)
        session.add_all(rows)
        session.commit()
        exports = [r.id for r in rows if isinstance(r, Export)]
        evaluations = [r.id for r in rows if isinstance(r, Evaluation)]
    assert walk(client, f"/jobs/{jobs[0]}/artifacts?limit=2") == [f"checkpoint-{i}" for i in range(3)]
    assert walk(client, f"/jobs/{jobs[0]}/checkpoints?limit=2") == [f"checkpoint-{i}" for i in range(3)]
    assert walk(client, f"/jobs/{jobs[0]}/exports?limit=2") == exports, "oldest first"
    assert walk(client, f"/jobs/{jobs[0]}/evaluations?limit=2") == evaluations
    assert len(client.get(f"/jobs/{jobs[0]}/exports").json()["data"]) == 3, "without limit: all of a short list"
    assert_problem(client.get("/datasets?cursor=bm9wZQ=="), 422, "invalid-request", "/datasets")


# --- Idempotency-Key ---


def test_an_idempotency_key_reused_with_another_body_is_422(client: TestClient, tiny_model: Path, queues: None) -> None:
    dataset = upload(client, "idempotent").json()["id"]
    spec = {"base_model": TINY_MODEL, "dataset": dataset, "format": {"type": "text", "field": "text"}}
    key = {"Idempotency-Key": f"k-{secrets.token_hex(4)}"}
    first = client.post("/jobs", json=spec, headers=key)
    assert first.status_code == 201, first.text

    same = client.post("/jobs", json=dict(reversed(spec.items())), headers=key)  # the same request, spelled apart
    assert same.status_code == 201 and same.json()["id"] == first.json()["id"]
    assert same.headers["idempotent-replayed"] == "true" and same.headers["location"] == first.headers["location"]

    other = client.post("/jobs", json={**spec, "training": {"learning_rate": 1e-3}}, headers=key)
    body = assert_problem(other, 422, "invalid-request", "/jobs")
    assert "different request" in body["detail"] and first.json()["id"] in body["detail"]
    assert client.post("/jobs", json=spec, headers={"Idempotency-Key": "a-new-one"}).json()["id"] != first.json()["id"]

"""Two tenants on one service: neither sees, downloads, cancels or confirms the other's things; keys, quotas, limits.

Quotas and rate limits are checked through extra API replicas (tests/integration/replicas.py) with strict
per-tenant limits, on the stack's own database and Redis, so the limits hold across replicas.
"""

import hashlib
import json
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.models import ApiKey, Job, utcnow
from ftctl.localstack import LocalStack
from tests.integration.conftest import Stack
from tests.integration.replicas import cancel_queued, ftctl, replicas, stack_database_url

ROWS = [{"text": f"example {i}: the quick brown fox jumps over the lazy dog"} for i in range(24)]
ID_IN_TEXT = re.compile(r"(job|ds|req)_[0-9a-f]{24}")  # req_: every error body names its own request id


def jsonl(rows: list[dict], tag: str = "") -> bytes:
    return "".join(json.dumps({**r, "tag": tag}) + "\n" for r in rows).encode()


def job_spec(dataset: str, **training: object) -> dict:
    return {
        "base_model": "tiny-llama",
        "dataset": dataset,
        "quantization": None,
        "lora": {"r": 8},
        "training": {"max_steps": 2, "batch_size": 4, "max_seq_length": 64, "optimizer": "adamw_torch", **training},
    }


def unique(stack: Stack, name: str) -> str:
    # Both stacks share one Redis, where rate limits count by tenant name: keep every tenant apart.
    return f"{name}-{stack.name}-{secrets.token_hex(3)}"


@dataclass
class Tenant:
    name: str
    key: str
    client: httpx.Client


@dataclass
class Owned:
    """Tenant A's things: a trained job with checkpoints and an adapter, its dataset, a job left queued."""

    owner: Tenant
    intruder: Tenant
    dataset: dict
    job: dict
    queued_job: str


@pytest.fixture(scope="module")
def owned(stack: Stack) -> Iterator[Owned]:
    a, b = unique(stack, "team-a"), unique(stack, "team-b")
    owner = Tenant(a, key := stack.make_key("alice", tenant=a), stack.client_for(key))
    intruder = Tenant(b, key := stack.make_key("mallory", tenant=b), stack.client_for(key))
    dataset = owner.client.post("/datasets", files={"file": ("a.jsonl", jsonl(ROWS, a))}).json()
    submitted = owner.client.post("/jobs", json=job_spec(dataset["id"], checkpoint_every_steps=1))
    assert submitted.status_code == 201, submitted.text
    job = wait(owner.client, submitted.json()["id"])
    assert job["status"] == "succeeded", job
    engine = make_engine(stack_database_url(stack))
    with Session(engine) as session:  # queued and marked as sent to a queue no worker reads: it never starts
        queued = Job(tenant=a, status="queued", spec=job["spec"], enqueued_at=utcnow())
        session.add(queued)
        session.commit()
        queued_id = queued.id
    engine.dispose()
    yield Owned(owner, intruder, dataset, job, queued_id)
    cancel_queued(stack, [a, b])
    owner.client.close()
    intruder.client.close()


def wait(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def probe(client: httpx.Client, method: str, path: str, ids: dict[str, str]) -> tuple[int, str]:
    """One request with the path's ids filled in; the answer with every id blanked, to compare two answers."""
    url = path.format_map(defaultdict(lambda: "x", {"name": "adapter", **ids}))
    body = {} if method == "post" else None
    response = client.request(method, url, json=body)
    return response.status_code, ID_IN_TEXT.sub("<id>", response.text)


def test_another_tenants_ids_answer_exactly_like_missing_ones(stack: Stack, owned: Owned) -> None:
    """Every operation that takes an id, found in the OpenAPI schema, so routes added later are covered too."""
    schema = httpx.get(f"{stack.local.base_url}/openapi.json").json()
    theirs = {"job_id": owned.job["id"], "dataset_id": owned.dataset["id"], "file_id": owned.dataset["id"]}
    missing = {"job_id": "job_" + "0" * 24, "dataset_id": "ds_" + "0" * 24, "file_id": "ds_" + "0" * 24}
    checked = 0
    for path, operations in schema["paths"].items():
        if not set(re.findall(r"{(\w+)}", path)) & set(theirs):
            continue
        for method in operations:
            foreign = probe(owned.intruder.client, method, path, theirs)
            absent = probe(owned.intruder.client, method, path, missing)
            assert foreign == absent, (method, path, foreign, absent)
            assert foreign[0] in (400, 404, 422), (method, path, foreign)
            assert owned.owner.name not in foreign[1]
            checked += 1
    assert checked >= 15, f"only {checked} operations take an id"
    # The owner still gets everything the intruder was refused.
    adapter = owned.owner.client.get(f"/jobs/{owned.job['id']}/artifacts/adapter")
    assert adapter.status_code == 200 and adapter.content[:2] == b"\x1f\x8b"


def test_another_tenant_cannot_cancel_use_or_list(stack: Stack, owned: Owned) -> None:
    intruder, owner = owned.intruder.client, owned.owner.client
    assert intruder.post(f"/jobs/{owned.queued_job}/cancel").status_code == 404
    assert intruder.post(f"/v1/fine_tuning/jobs/{owned.queued_job}/cancel").status_code == 404
    assert owner.get(f"/jobs/{owned.queued_job}").json()["status"] == "queued", "the intruder cancelled nothing"
    for path, key in [
        ("/jobs", "data"),
        ("/datasets", "data"),
        ("/v1/files", "data"),
        ("/v1/fine_tuning/jobs", "data"),
    ]:
        listed = intruder.get(path)
        assert listed.status_code == 200 and listed.json()[key] == [], (path, listed.text)
    # Training on another tenant's dataset is refused exactly as training on one that does not exist.
    for path in ("/jobs", "/jobs/validate"):
        foreign = intruder.post(path, json=job_spec(owned.dataset["id"]))
        absent = intruder.post(path, json=job_spec("ds_" + "0" * 24))
        assert foreign.status_code == absent.status_code
        assert ID_IN_TEXT.sub("<id>", foreign.text) == ID_IN_TEXT.sub("<id>", absent.text)
    openai = intruder.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": owned.dataset["id"]})
    assert openai.status_code == 400 and "no file" in openai.json()["error"]["message"]
    # Naming another tenant in a list is an admin's privilege, and says nothing about whether it exists.
    for path in ("/jobs", "/datasets"):
        for name in (owned.owner.name, "no-such-tenant", "*"):
            assert intruder.get(path, params={"tenant": name}).status_code == 403
    # Prometheus figures are the caller's tenant's own: the owner's succeeded job is not counted here.
    families = {f.name: f.samples for f in text_string_to_metric_families(intruder.get("/metrics").text)}
    assert sum(s.value for s in families["ft_jobs"]) == 0
    assert sum(s.value for s in families["ft_trained_steps"]) == 0


def test_admin_keys_see_every_tenant_and_revoke(stack: Stack, owned: Owned) -> None:
    ops = unique(stack, "ops")
    made = ftctl(stack, "keys", "create", "root", "--tenant", ops, "--admin")
    with stack.client_for(made.stdout.strip().splitlines()[-1]) as admin:
        assert admin.get("/jobs").json()["data"] == [], "by default an admin key lists its own tenant"
        theirs = admin.get("/jobs", params={"tenant": owned.owner.name}).json()["data"]
        assert owned.job["id"] in [j["id"] for j in theirs] and {j["tenant"] for j in theirs} == {owned.owner.name}
        everyone = admin.get("/jobs", params={"tenant": "*", "limit": 500}).json()["data"]
        assert owned.job["id"] in [j["id"] for j in everyone]
        assert admin.get(f"/jobs/{owned.job['id']}").json()["tenant"] == owned.owner.name
        assert admin.get(f"/datasets/{owned.dataset['id']}").status_code == 200
        assert admin.get(f"/jobs/{owned.job['id']}/metrics").status_code == 200
        keys = admin.get("/admin/keys", params={"tenant": owned.intruder.name})
        assert keys.status_code == 200 and len(keys.json()["data"]) == 1
        assert (
            owned.intruder.key not in keys.text
            and hashlib.sha256(owned.intruder.key.encode()).hexdigest() not in keys.text
        )
        usage = {t["tenant"]: t for t in admin.get("/admin/tenants").json()["data"]}
        assert usage[owned.owner.name]["usage"]["queued_jobs"] == 1
        # Revoking takes effect on the next request, on every replica: keys are checked in SQL each time.
        revoked = admin.post(f"/admin/keys/{keys.json()['data'][0]['id']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    refused = owned.intruder.client.get("/jobs")
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    for path in ("/admin/keys", "/admin/tenants"):
        assert owned.owner.client.get(path).status_code == 403


def test_keys_are_shown_once_stored_hashed_and_never_logged(stack: Stack) -> None:
    tenant = unique(stack, "keys")
    created = ftctl(stack, "keys", "create", "ci-bot", "--tenant", tenant)
    key = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"ft_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key) and created.stdout.strip() == key
    secret = key.split("_", 2)[2]
    listed = ftctl(stack, "keys", "list").stdout
    assert tenant in listed and secret not in listed and hashlib.sha256(key.encode()).hexdigest() not in listed
    engine = make_engine(stack_database_url(stack))
    with Session(engine) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.tenant == tenant))
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() and secret not in json.dumps(
            {c.name: str(getattr(row, c.name)) for c in ApiKey.__table__.columns}
        )
    engine.dispose()
    wrong = f"ft_{key.split('_')[1]}_{secrets.token_urlsafe(32)}"
    with replicas(stack, 1, {}) as (replica,):
        for credential in (key, wrong):
            headers = {"Authorization": f"Bearer {credential}"}
            for path in ("/jobs", "/datasets", "/v1/fine_tuning/jobs", "/jobs/job_000000000000000000000000"):
                httpx.get(f"{replica.base_url}{path}", headers=headers)
        log = (replica.log_dir / "api.log").read_text()
    assert '"message": "GET /jobs 200"' in log and '"message": "GET /jobs 401"' in log, "the access log is on"
    for logged in (
        log,
        (stack.local.log_dir / "api.log").read_text(),
        (stack.local.log_dir / "worker.log").read_text(),
    ):
        assert secret not in logged and wrong.split("_", 2)[2] not in logged


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[tuple[list[LocalStack], dict[str, str]]]:
    """Two replicas; `quota` and `rate` tenants with small limits (their keys in the second item)."""
    quota, rate = unique(stack, "quota"), unique(stack, "rate")
    tenant_limits = {
        quota: {
            "max_queued_jobs": 2,
            "max_training_steps": 50,
            "max_epochs": 3,
            "max_seq_length": 256,
            "max_lora_rank": 8,
            "max_upload_bytes": 4096,
        },
        rate: {"upload_rate_per_minute": 3, "submit_rate_per_minute": 2},
    }
    keys = {"quota": stack.make_key("quota", tenant=quota), "rate": stack.make_key("rate", tenant=rate)}
    with replicas(stack, 2, tenant_limits) as started:
        yield started, keys
    cancel_queued(stack, [quota, rate])


def test_quotas_and_bounds_per_tenant(stack: Stack, limited: tuple[list[LocalStack], dict[str, str]]) -> None:
    (replica, _), keys = limited
    headers = {"Authorization": f"Bearer {keys['quota']}"}
    with httpx.Client(base_url=replica.base_url, headers=headers, timeout=60) as client:
        too_big = client.post("/datasets", files={"file": ("big.jsonl", jsonl(ROWS * 5))})
        assert too_big.status_code == 413 and "FT_TENANT_LIMITS" in too_big.json()["detail"], too_big.text
        dataset = client.post("/datasets", files={"file": ("a.jsonl", jsonl(ROWS[:12]))}).json()
        bounds = {
            "training.max_steps": {"max_steps": 51},
            "training.epochs": {"max_steps": None, "epochs": 4},
            "training.max_seq_length": {"max_seq_length": 512},
        }
        for field, training in bounds.items():
            refused = client.post("/jobs", json=job_spec(dataset["id"], **training))
            assert refused.status_code == 422 and field in refused.json()["detail"], (field, refused.text)
            report = client.post("/jobs/validate", json=job_spec(dataset["id"], **training)).json()
            assert not report["ok"] and report["problems"][0]["field"] == field
        rank = client.post("/jobs", json={**job_spec(dataset["id"]), "lora": {"r": 16}})
        assert rank.status_code == 422 and "lora.r" in rank.json()["detail"]
        first, second = (client.post("/jobs", json=job_spec(dataset["id"])) for _ in range(2))
        assert first.status_code == second.status_code == 201, (first.text, second.text)
        third = client.post("/jobs", json=job_spec(dataset["id"]))
        assert third.status_code == 429, third.text
        assert third.json()["limit"] == "max_queued_jobs" and third.json()["usage"] == 2
        assert int(third.headers["retry-after"]) > 0
        pairs = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(8)]
        pairs_file = client.post("/v1/files", files={"file": ("p.jsonl", jsonl(pairs))}, data={"purpose": "fine-tune"})
        openai = client.post(
            "/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": pairs_file.json()["id"]}
        )
        assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limit_error"
        assert client.get("/limits").json()["usage"]["queued_jobs"] == 2
        assert client.post(f"/jobs/{first.json()['id']}/cancel").json()["status"] == "cancelled"
        assert client.post("/jobs", json=job_spec(dataset["id"])).status_code == 201, "a freed slot is usable"


def test_rate_limits_hold_across_replicas(limited: tuple[list[LocalStack], dict[str, str]]) -> None:
    started, keys = limited
    clients = [
        httpx.Client(base_url=r.base_url, headers={"Authorization": f"Bearer {keys['rate']}"}, timeout=60)
        for r in started
    ]
    if time.time() % 60 > 45:  # counts are per minute: start with a fresh window, not at its edge
        time.sleep(61 - time.time() % 60)
    answers = [clients[i % 2].post("/datasets", files={"file": ("r.jsonl", jsonl(ROWS[:2], str(i)))}) for i in range(4)]
    assert [a.status_code for a in answers[:3]] == [201, 201, 201]
    refused = answers[3]
    assert refused.status_code == 429 and refused.json()["limit"] == "upload_rate_per_minute", refused.text
    assert 0 < int(refused.headers["retry-after"]) <= 60
    dataset = answers[0].json()["id"]
    checks = [clients[i % 2].post("/jobs/validate", json=job_spec(dataset)) for i in range(2)]
    assert [c.status_code for c in checks] == [200, 200]
    submit = clients[0].post("/jobs", json=job_spec(dataset))
    assert submit.status_code == 429 and submit.json()["limit"] == "submit_rate_per_minute"
    for client in clients:
        client.close()

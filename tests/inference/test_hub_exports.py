"""POST /jobs/{id}/exports with kind `hub`, as the API checks it (in-process: migrated SQLite, real Redis): the
body, the tenant's Hub token, the allow-list, and the record a client polls. Publishing itself is
tests/worker/test_hub_publish.py and tests/integration/test_hub_publish.py."""

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.config import settings
from app.core.db import SessionLocal
from app.inference.export_schemas import ExportCreate
from app.main import create_app
from app.models import Export, Job
from app.spec.job import JobSpec
from app.tenants.auth import create_key
from app.tenants.secrets import HUB_TOKEN, set_secret
from tests.test_http_conventions import ROOT


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"hub-{secrets.token_hex(4)}"


@pytest.fixture
def client(tenant: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The tenant's client; sent tasks go to queues of this test's own that no worker reads, emptied afterwards."""
    name = f"hub-exports-{secrets.token_hex(4)}"
    monkeypatch.setattr(settings, "inference_queue", f"{name}-inference")
    with SessionLocal() as session:
        key = create_key(session, "hub", tenant=tenant)
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as test_client:
        yield test_client
    broker = redis.Redis.from_url(settings.redis_url)
    for key in broker.scan_iter(match=f"{name}*"):
        broker.delete(key)


def succeeded_job(tenant: str, **spec: Any) -> str:
    fields = {"base_model": "tiny-org/tiny-llama", "dataset": "ds_" + "0" * 24, **spec}
    with SessionLocal() as session:
        job = Job(tenant=tenant, status="succeeded", spec=JobSpec.model_validate(fields).model_dump(mode="json"))
        session.add(job)
        session.commit()
        return job.id


def give_token(tenant: str) -> None:
    with SessionLocal() as session:
        set_secret(session, tenant, HUB_TOKEN, "hf_" + secrets.token_hex(8))
        session.commit()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"kind": "hub"}, "needs repo_id"),
        ({"kind": "hub", "repo_id": "no-namespace"}, "`namespace/name`"),
        ({"kind": "hub", "repo_id": "acme/two--dashes"}, "not a valid Hub repo id"),
        ({"kind": "hub", "repo_id": "https://huggingface.co/acme/x"}, "`namespace/name`"),
        ({"kind": "hub", "repo_id": "acme/x", "revision": "../main"}, "branch name"),
        ({"kind": "hub", "repo_id": "acme/x", "token": "hf_x"}, "Extra inputs"),
        ({"kind": "merged", "repo_id": "acme/x"}, 'apply to kind "hub" only'),
        ({"kind": "merged", "private": False}, 'apply to kind "hub" only'),
    ],
)
def test_a_hub_export_body_is_checked_before_anything_is_asked(body: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        ExportCreate.model_validate(body)


def test_defaults_a_merged_download_and_a_private_adapter_on_main() -> None:
    assert ExportCreate.model_validate({}).hub_options() is None
    hub = ExportCreate.model_validate({"kind": "hub", "repo_id": "acme/x"})
    assert hub.hub_options() == {"repo_id": "acme/x", "private": True, "merged": False, "revision": None}


def test_a_tenant_without_a_hub_token_is_told_how_to_get_one_then_the_export_is_queued(
    client: TestClient, tenant: str
) -> None:
    job_id = succeeded_job(tenant)
    body = {"kind": "hub", "repo_id": "acme/tagger", "private": True}
    refused = client.post(f"/jobs/{job_id}/exports", json=body)
    assert refused.status_code == 422, refused.text
    assert f"PUT /admin/tenants/{tenant}/hub-token" in refused.json()["detail"]

    give_token(tenant)
    queued = client.post(f"/jobs/{job_id}/exports", json=body)
    assert queued.status_code == 202, queued.text
    export = queued.json()
    assert export["kind"] == "hub" and export["status"] == "queued" and export["artifact_url"] is None
    assert export["hub"] == {
        "repo_id": "acme/tagger",
        "private": True,
        "merged": False,
        "revision": None,
        "url": None,
        "commit": None,
        "commit_url": None,
    }
    with SessionLocal() as session:  # as the worker records a published one
        row = session.get(Export, export["id"])
        row.status, row.result = "succeeded", {"url": "https://hub/acme/tagger", "commit": "c" * 40, "commit_url": "u"}
        session.commit()
    done = client.get(queued.headers["location"]).json()
    assert done["hub"]["url"] == "https://hub/acme/tagger" and done["hub"]["commit"] == "c" * 40
    assert done["artifact_url"] is None  # nothing to download: the repo is the result


def test_the_hub_allow_list_applies_to_writes(client: TestClient, tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    give_token(tenant)
    monkeypatch.setattr(settings, "tenant_access", {tenant: {"hub": ["acme/*"]}})
    job_id = succeeded_job(tenant)
    refused = client.post(f"/jobs/{job_id}/exports", json={"kind": "hub", "repo_id": "elsewhere/tagger"})
    assert refused.status_code == 422 and "FT_TENANT_ACCESS" in refused.json()["detail"], refused.text
    assert "acme/*" in refused.json()["detail"]
    assert client.post(f"/jobs/{job_id}/exports", json={"kind": "hub", "repo_id": "acme/tagger"}).status_code == 202


def test_only_a_merged_hub_export_needs_a_mergeable_adapter(client: TestClient, tenant: str) -> None:
    give_token(tenant)
    job_id = succeeded_job(tenant, adapter={"method": "prompt_tuning", "init": "sample_vocab"}, quantization=None)
    merged = client.post(f"/jobs/{job_id}/exports", json={"kind": "hub", "repo_id": "acme/p", "merged": True})
    assert merged.status_code == 409 and "nothing to merge" in merged.json()["detail"]
    adapter = client.post(f"/jobs/{job_id}/exports", json={"kind": "hub", "repo_id": "acme/p"})
    assert adapter.status_code == 202, adapter.text  # a prompt-tuning adapter is published as it is


def test_a_job_still_running_has_no_adapter_to_publish(client: TestClient, tenant: str) -> None:
    give_token(tenant)
    job_id = succeeded_job(tenant)
    with SessionLocal() as session:
        session.get(Job, job_id).status = "running"
        session.commit()
    busy = client.post(f"/jobs/{job_id}/exports", json={"kind": "hub", "repo_id": "acme/tagger"})
    assert busy.status_code == 409 and "is running" in busy.json()["detail"]

"""`init_from: {"hub": ...}` and a `base_model` that is a Hub adapter repo, as POST /jobs checks them (in-process:
migrated SQLite, real Redis, and a real local stand-in of the Hub's API, tests/hub_server.py)."""

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.spec.job import JobSpec
from app.tenants.auth import create_key
from app.tenants.secrets import HUB_TOKEN, set_secret
from tests.conftest import TINY_MODEL
from tests.hub_server import HubStandIn, HubUser, hub_stand_in, use_in_process
from tests.test_http_conventions import ROOT

ALICE = HubUser("alice", "hf_alice_reads", orgs=("acme",))


def adapter_config(base: str = TINY_MODEL, **fields: object) -> bytes:
    config = {"base_model_name_or_path": base, "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, **fields}
    return json.dumps(config).encode()


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStandIn]:
    with hub_stand_in(tmp_path_factory.mktemp("hub"), [ALICE]) as server:
        weights = {"adapter_model.safetensors": b"weights"}
        server.seed("acme/adapter", {"adapter_config.json": adapter_config(), **weights}, private=True)
        server.seed("acme/other-base", {"adapter_config.json": adapter_config("other/base"), **weights})
        server.seed("acme/local-path", {"adapter_config.json": adapter_config("/home/me/llama"), **weights})
        server.seed("acme/plain-model", {"config.json": b"{}", "model.safetensors": b"weights"})
        yield server


@pytest.fixture
def tenant() -> str:
    return f"hub-init-{secrets.token_hex(4)}"


@pytest.fixture
def client(
    tenant: str, hub: HubStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path
) -> Iterator[TestClient]:
    """The tenant's client, reading the stand-in with its Hub token; jobs queue where no worker reads."""
    use_in_process(monkeypatch, hub, tmp_path / "hf-cache")
    name = f"hub-init-{secrets.token_hex(4)}"
    monkeypatch.setattr(settings, "training_queue", f"{name}-training")
    with SessionLocal() as session:
        key = create_key(session, "hub-init", tenant=tenant)
        set_secret(session, tenant, HUB_TOKEN, ALICE.token)
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as test_client:
        yield test_client
    broker = redis.Redis.from_url(settings.redis_url)
    for key in broker.scan_iter(match=f"{name}*"):
        broker.delete(key)


def spec(client: TestClient, **fields: object) -> dict:
    rows = "".join(json.dumps({"text": f"The quick brown fox {i}."}) + "\n" for i in range(8)).encode()
    dataset = client.post("/datasets", files={"file": ("fox.jsonl", rows)}).json()
    base = {"base_model": TINY_MODEL, "dataset": dataset["id"], "quantization": None}
    return {**base, "format": {"type": "text", "field": "text"}, "training": {"max_steps": 2}, **fields}


def problems(client: TestClient, body: dict) -> dict[str, str]:
    report = client.post("/jobs/validate", json=body)
    assert report.status_code == 200, report.text
    return {p.get("field", ""): p["message"] for p in report.json()["problems"]}


def test_a_base_model_that_is_a_hub_adapter_means_its_base_with_that_adapter_continued(client: TestClient) -> None:
    created = client.post("/jobs", json=spec(client, base_model="acme/adapter"))
    assert created.status_code == 201, created.text
    job = created.json()["spec"]
    assert job["base_model"] == TINY_MODEL
    assert job["init_from"] == {"job": None, "checkpoint_step": None, "hub": "acme/adapter", "revision": None}
    said = problems(client, spec(client, base_model="acme/adapter", init_from={"hub": "acme/adapter"}))
    assert "already continues it" in said["init_from"]
    said = problems(client, spec(client, base_model="acme/local-path"))
    assert (
        "'/home/me/llama' is not a Hub id" in said["base_model"] and '{"hub": "acme/local-path"}' in said["base_model"]
    )


def test_init_from_hub_is_read_as_the_tenant_and_must_fit_the_spec(
    client: TestClient, hub: HubStandIn, monkeypatch: pytest.MonkeyPatch, tenant: str
) -> None:
    assert problems(client, spec(client, init_from={"hub": "acme/adapter"})) == {}
    assert ("GET", "/api/models/acme/adapter", "alice") in hub.requests  # with the tenant's own token
    dora = problems(client, spec(client, init_from={"hub": "acme/adapter"}, adapter={"method": "dora"}))
    assert "is a lora adapter and this spec trains dora: set adapter.method to 'lora'" in dora["init_from.hub"]
    other = problems(client, spec(client, init_from={"hub": "acme/other-base"}))
    assert "an adapter for 'other/base', not for base_model 'tiny-llama'" in other["init_from.hub"]
    plain = problems(client, spec(client, init_from={"hub": "acme/plain-model"}))
    assert "holds no PEFT adapter" in plain["init_from.hub"]
    missing = problems(client, spec(client, init_from={"hub": "acme/adapter", "revision": "no-such-branch"}))
    assert "acme/adapter" in missing["init_from.hub"]
    classify = {"type": "classification", "text": "{text}", "label": "text"}
    assert (
        "classification"
        in problems(client, spec(client, init_from={"hub": "acme/adapter"}, format=classify))["init_from.hub"]
    )
    monkeypatch.setattr(settings, "tenant_access", {tenant: {"hub": ["elsewhere/*"]}})
    refused = problems(client, spec(client, init_from={"hub": "acme/adapter"}))
    assert "FT_TENANT_ACCESS" in refused["init_from.hub"]


def test_a_private_hub_adapter_is_not_read_without_the_tenants_token(client: TestClient, tenant: str) -> None:
    with SessionLocal() as session:
        key = create_key(session, "no-token", tenant=f"{tenant}-other")
        session.commit()
    other = TestClient(create_app(), headers={"Authorization": f"Bearer {key}"})
    said = problems(other, spec(other, init_from={"hub": "acme/adapter"}))
    assert "private or gated" in said["init_from.hub"] and "hub-token" in said["init_from.hub"]
    created = other.post("/jobs", json=spec(other, base_model="acme/adapter"))
    assert created.status_code == 422  # not rewritten: to this tenant it is no readable model at all


@pytest.mark.parametrize(
    ("init_from", "says"),
    [
        ({}, "names one adapter"),
        ({"job": "job_" + "0" * 24, "hub": "acme/adapter"}, "names one adapter"),
        ({"hub": "acme/adapter", "checkpoint_step": 10}, "checkpoint_step goes with `job`"),
        ({"job": "job_" + "0" * 24, "revision": "main"}, "revision goes with `hub`"),
        ({"hub": "https://huggingface.co/acme/adapter"}, "no URLs"),
        ({"hub": "acme/adapter", "revision": "../x"}, "branch, tag or commit"),
    ],
)
def test_init_from_names_exactly_one_adapter(init_from: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        JobSpec.model_validate({"base_model": TINY_MODEL, "dataset": "ds_" + "0" * 24, "init_from": init_from})

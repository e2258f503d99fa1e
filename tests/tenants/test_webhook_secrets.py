"""The admin routes for a tenant's webhook signing secret: made and rotated by an admin, shown once, then only
whether one is set and since when; and the secret shown is the one the tenant's webhooks are signed with, as a
receiver holding it checks with the `standardwebhooks` library alone."""

import base64
import binascii
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from app.core.config import settings
from app.core.db import SessionLocal
from app.jobs.webhooks import Outbox, deliver_due, notify_job_finished, verify_signature
from app.main import create_app
from app.models import Job, utcnow
from app.tenants.auth import create_key
from app.tenants.secrets import new_webhook_secret
from tests.webhook_receiver import Received, WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("FT_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"signed-{secrets.token_hex(4)}"


def client_for(tenant: str, is_admin: bool) -> TestClient:
    with SessionLocal() as session:
        key = create_key(session, "secrets", tenant=tenant, is_admin=is_admin)
        session.commit()
    return TestClient(create_app(), headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def admin() -> Iterator[TestClient]:
    with client_for("ops", is_admin=True) as c:
        yield c


def signed_delivery(tenant: str, monkeypatch: pytest.MonkeyPatch) -> Received:
    """Send one real webhook of a finished job of the tenant; returns what its receiver got."""
    monkeypatch.setattr(settings, "egress_allow", "127.0.0.0/8")
    outbox = Outbox(redis.Redis.from_url(REDIS_URL, decode_responses=True), prefix=f"ft:test-wh:{secrets.token_hex(4)}")
    with WebhookReceiver() as receiver:
        with SessionLocal() as session:
            spec = {"base_model": "m", "dataset": "d", "webhook_url": receiver.url}
            job = Job(tenant=tenant, status="succeeded", spec=spec, finished_at=utcnow())
            session.add(job)
            session.commit()
        notify_job_finished(job.id, outbox=outbox)
        deliver_due(outbox)
    for key in outbox.client.scan_iter(f"{outbox.prefix}:*"):
        outbox.client.delete(key)
    (got,) = receiver.received
    return got


def legacy_ok(secret: str, got: Received) -> bool:
    """The deprecated X-FT-Signature, still sent for one release."""
    return verify_signature(secret, got.body, got.headers["x-ft-timestamp"], got.headers["x-ft-signature"])


def test_a_new_secret_is_a_standard_webhooks_secret() -> None:
    made = {new_webhook_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert secret.startswith("whsec_")
        try:  # standard base64 (not URL-safe), which standardwebhooks decodes after the prefix: 256 random bits
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error as exc:
            raise AssertionError(f"{secret} is not whsec_ + standard base64") from exc
        assert len(key) == 32


def test_a_secret_is_shown_once_rotated_and_removed(
    admin: TestClient, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "webhook_secret", "the-fallback")
    path = f"/admin/tenants/{tenant}/webhook-secret"
    assert admin.get(path).json() == {"tenant": tenant, "kind": "webhook_secret", "is_set": False, "created_at": None}

    made = admin.post(path)
    assert made.status_code == 201 and made.json()["secret"].startswith("whsec_") and made.json()["is_set"]
    status = admin.get(path).json()
    assert "secret" not in status and status["is_set"] and status["created_at"] == made.json()["created_at"]
    assert made.json()["secret"] not in admin.get(path).text

    rotated = admin.post(path).json()
    assert rotated["secret"] != made.json()["secret"]
    got = signed_delivery(tenant, monkeypatch)
    assert Webhook(rotated["secret"]).verify(got.body, got.headers)["event"] == "job.succeeded", "the secret shown"
    with pytest.raises(WebhookVerificationError):
        Webhook(made.json()["secret"]).verify(got.body, got.headers)  # the old one stopped at once
    assert legacy_ok(rotated["secret"], got) and not legacy_ok(made.json()["secret"], got)

    removed = admin.delete(path)
    assert removed.status_code == 200 and removed.json()["is_set"] is False
    got = signed_delivery(tenant, monkeypatch)
    fallback_for_receivers = base64.b64encode(b"the-fallback").decode()  # not whsec_: its bytes are the key
    assert Webhook(fallback_for_receivers).verify(got.body, got.headers)["event"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        Webhook(rotated["secret"]).verify(got.body, got.headers)
    assert legacy_ok("the-fallback", got), "back to FT_WEBHOOK_SECRET"
    again = admin.delete(path)
    assert again.status_code == 404 and "POST /admin/tenants/" in again.json()["detail"]


def test_only_an_admin_key_may_see_or_set_a_secret_and_the_tenant_name_is_checked(
    admin: TestClient, tenant: str
) -> None:
    path = f"/admin/tenants/{tenant}/webhook-secret"
    with client_for(tenant, is_admin=False) as own:
        for method in ("get", "post", "delete"):
            response = getattr(own, method)(path)
            assert response.status_code == 403 and "admin" in response.json()["detail"]
    bad = admin.post("/admin/tenants/-no%20such/webhook-secret")
    assert bad.status_code == 422 and "not a tenant name" in bad.json()["detail"]


def test_a_hub_token_is_set_by_an_admin_never_shown_and_used_for_the_tenants_hub_reads(
    admin: TestClient, tenant: str
) -> None:
    from app.datasets.tenant_access import access_for

    token = "hf_" + secrets.token_hex(16)
    set_ = admin.put(f"/admin/tenants/{tenant}/hub-token", json={"token": token})
    assert set_.status_code == 200, set_.text
    assert set_.json()["is_set"] is True and token not in set_.text
    shown = admin.get(f"/admin/tenants/{tenant}/hub-token")
    assert shown.json()["is_set"] is True and token not in shown.text
    with SessionLocal() as session:
        assert access_for(session, tenant).hf_token == token
    assert admin.delete(f"/admin/tenants/{tenant}/hub-token").json()["is_set"] is False
    with SessionLocal() as session:
        assert access_for(session, tenant).hf_token is False  # public repos only, never the service's HF_TOKEN
    again = admin.delete(f"/admin/tenants/{tenant}/hub-token")
    assert again.status_code == 404 and "PUT /admin/tenants/" in again.json()["detail"]
    assert admin.put(f"/admin/tenants/{tenant}/hub-token", json={"token": "x y"}).status_code == 422
    with client_for(tenant, is_admin=False) as user:
        assert user.put(f"/admin/tenants/{tenant}/hub-token", json={"token": token}).status_code == 403

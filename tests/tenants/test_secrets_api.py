"""Tenant secrets: an admin sets, lists, rotates and deletes them; no answer ever holds a value; rows are encrypted
at rest (Fernet, FT_SECRETS_KEY or the key file) and re-encrypted on rotation; rows from before encryption still
read; and a tracker the tenant has no secret for is refused at submit, naming the route that sets it."""

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from app.checks.integrations import check_integrations
from app.checks.report import ValidationReport
from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.models import TenantSecret
from app.spec.job import JobSpec
from app.tenants import secret_box
from app.tenants.auth import create_key
from app.tenants.secrets import get_secret, reencrypt_all

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"vault-{secrets.token_hex(4)}"


def client_for(tenant: str, is_admin: bool) -> TestClient:
    with SessionLocal() as session:
        key = create_key(session, "secrets", tenant=tenant, is_admin=is_admin)
        session.commit()
    return TestClient(create_app(), headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def admin() -> Iterator[TestClient]:
    with client_for("ops", is_admin=True) as c:
        yield c


def stored(tenant: str, name: str) -> str:
    with SessionLocal() as session:
        query = select(TenantSecret.value).where(TenantSecret.tenant == tenant, TenantSecret.kind == name)
        return session.scalar(query)


def clear(tenant: str, name: str) -> str | None:
    with SessionLocal() as session:
        return get_secret(session, tenant, name)


def test_secrets_are_set_listed_rotated_and_deleted_and_never_shown(admin: TestClient, tenant: str) -> None:
    base = f"/admin/tenants/{tenant}/secrets"
    assert admin.get(base).json() == {"data": []}
    first, second = secrets.token_hex(20), secrets.token_hex(20)
    put = admin.put(f"{base}/wandb_api_key", json={"value": first})
    assert put.status_code == 200 and put.json()["name"] == "wandb_api_key" and first not in put.text
    admin.put(f"{base}/mlflow_tracking_token", json={"value": "tok-" + first})
    listed = admin.get(base)
    assert [s["name"] for s in listed.json()["data"]] == ["mlflow_tracking_token", "wandb_api_key"]
    assert first not in listed.text and set(listed.json()["data"][0]) == {"tenant", "name", "set_at"}
    assert clear(tenant, "wandb_api_key") == first

    rotated = admin.put(f"{base}/wandb_api_key", json={"value": second})
    assert rotated.json()["set_at"] >= put.json()["set_at"] and clear(tenant, "wandb_api_key") == second

    assert admin.delete(f"{base}/wandb_api_key").status_code == 204
    assert [s["name"] for s in admin.get(base).json()["data"]] == ["mlflow_tracking_token"]
    gone = admin.delete(f"{base}/wandb_api_key")
    assert gone.status_code == 404 and f"GET /admin/tenants/{tenant}/secrets" in gone.json()["detail"]


def test_names_values_tenants_and_callers_are_checked(admin: TestClient, tenant: str) -> None:
    base = f"/admin/tenants/{tenant}/secrets"
    unknown = admin.put(f"{base}/wandb_apikey", json={"value": "x"})
    assert unknown.status_code == 422 and "wandb_api_key" in unknown.json()["detail"]
    assert admin.put(f"{base}/mlflow_tracking_password", json={"value": "two\nlines"}).status_code == 422
    assert admin.put(f"{base}/hub_token", json={"value": "not a token"}).status_code == 422
    assert admin.put(f"{base}/hub_token", json={"value": "x", "extra": 1}).status_code == 422
    assert admin.get("/admin/tenants/-bad%20name/secrets").status_code == 422
    with client_for(tenant, is_admin=False) as own:
        assert own.get(base).status_code == 403
        assert own.put(f"{base}/wandb_api_key", json={"value": "x"}).status_code == 403
        assert own.delete(f"{base}/wandb_api_key").status_code == 403


def test_rows_are_encrypted_at_rest_old_routes_too(admin: TestClient, tenant: str) -> None:
    value = secrets.token_hex(20)
    admin.put(f"/admin/tenants/{tenant}/secrets/mlflow_tracking_password", json={"value": value})
    hub = "hf_" + secrets.token_hex(16)
    admin.put(f"/admin/tenants/{tenant}/hub-token", json={"token": hub})  # the old routes keep working
    made = admin.post(f"/admin/tenants/{tenant}/webhook-secret").json()["secret"]
    for name, secret in [("mlflow_tracking_password", value), ("hub_token", hub), ("webhook_secret", made)]:
        row = stored(tenant, name)
        assert row.startswith("fernet:") and secret not in row
        assert secret_box.box()[0].decrypt(row.removeprefix("fernet:").encode()).decode() == secret
    assert admin.get(f"/admin/tenants/{tenant}/hub-token").json()["is_set"] is True
    assert [s["name"] for s in admin.get(f"/admin/tenants/{tenant}/secrets").json()["data"]] == [
        "hub_token",
        "mlflow_tracking_password",
        "webhook_secret",
    ]


def test_a_clear_row_still_reads_and_rotating_the_key_reencrypts_every_row(
    tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setattr(settings, "secrets_key", SecretStr(old))
    with SessionLocal() as session:  # as rows were before encryption came
        session.add(TenantSecret(tenant=tenant, kind="wandb_api_key", value="clear-legacy-key"))
        session.commit()
    assert clear(tenant, "wandb_api_key") == "clear-legacy-key"
    with SessionLocal() as session:
        from app.tenants.secrets import set_secret

        set_secret(session, tenant, "mlflow_tracking_token", "under-the-old-key")
        session.commit()
        changed, total = reencrypt_all(session, tenant)  # the clear row is encrypted
        session.commit()
    assert (changed, total) == (1, 2) and stored(tenant, "wandb_api_key").startswith("fernet:")

    monkeypatch.setattr(settings, "secrets_key", SecretStr(f"{new},{old}"))
    assert clear(tenant, "mlflow_tracking_token") == "under-the-old-key"  # the old key still decrypts
    with SessionLocal() as session:
        assert reencrypt_all(session, tenant) == (2, 2)
        session.commit()
    monkeypatch.setattr(settings, "secrets_key", SecretStr(new))  # the old key dropped
    assert clear(tenant, "mlflow_tracking_token") == "under-the-old-key"
    assert clear(tenant, "wandb_api_key") == "clear-legacy-key"
    monkeypatch.setattr(settings, "secrets_key", SecretStr(Fernet.generate_key().decode()))
    with pytest.raises(secret_box.SecretUnreadable, match="FT_SECRETS_KEY"):
        clear(tenant, "mlflow_tracking_token")


def test_without_a_key_a_private_key_file_is_made_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {**os.environ, "FT_DATA_DIR": str(tmp_path)}
    env.pop("FT_SECRETS_KEY", None)
    code = "from app.tenants import secret_box as b; b.check_key(); print(b.decrypt(b.encrypt('v')))"
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "v" and "FT_SECRETS_KEY is unset" in out.stderr
    key_file = tmp_path / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_text().strip()) == 44
    bad = subprocess.run(
        [sys.executable, "-c", code], env={**env, "FT_SECRETS_KEY": "nope"}, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "ftctl secrets make-key" in bad.stderr


def test_a_tracker_needs_the_tenants_secret_to_be_queued(tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = JobSpec.model_validate(
        {"base_model": "m", "dataset": "ds_x", "integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}
    )
    monkeypatch.setattr(settings, "wandb_mode", "online")
    with SessionLocal() as session:
        report = ValidationReport(ok=True)
        check_integrations(session, tenant, spec, report)
        (problem,) = report.problems
        assert problem.field == "integrations.0.wandb"
        assert f"PUT /admin/tenants/{tenant}/secrets/wandb_api_key" in problem.message
        assert "FT_WANDB_MODE=offline" in problem.message
        monkeypatch.setattr(settings, "wandb_mode", "offline")  # offline runs need no key
        report = ValidationReport(ok=True)
        check_integrations(session, tenant, spec, report)
        assert report.problems == []


def test_ftctl_makes_keys_and_reencrypts_a_tenants_rows(tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ftctl.main import app as ftctl

    runner = CliRunner()
    made = runner.invoke(ftctl, ["secrets", "make-key"])
    assert made.exit_code == 0 and Fernet(made.stdout.strip().encode())  # a key FT_SECRETS_KEY takes
    with SessionLocal() as session:
        session.add(TenantSecret(tenant=tenant, kind="hub_token", value="hf_cleartextlegacy"))
        session.commit()
    done = runner.invoke(ftctl, ["secrets", "reencrypt", "--tenant", tenant])
    assert done.exit_code == 0 and "re-encrypted 1 of 1" in done.stdout
    assert stored(tenant, "hub_token").startswith("fernet:") and clear(tenant, "hub_token") == "hf_cleartextlegacy"

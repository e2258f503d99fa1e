"""Per-tenant secrets an admin sets and the service uses: a webhook signing secret, a Hub token, tracker credentials.

Stored encrypted (app/tenants/secret_box.py) and never shown again once set: the API says only which are set and
since when. Names are a fixed, documented set (NAMES): a secret the service would never read is refused rather than
kept, and a misspelt name (`wandb_apikey`) is a 422 instead of a tracker silently running without its key.
"""

import base64
import re
import secrets as _random
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import Invalid, NotFound
from app.models import TenantSecret, utcnow
from app.tenants import secret_box
from app.tenants.auth import TENANT_NAME

WEBHOOK_SECRET = "webhook_secret"
HUB_TOKEN = "hub_token"
WANDB_API_KEY = "wandb_api_key"
MLFLOW_TRACKING_TOKEN = "mlflow_tracking_token"
MLFLOW_TRACKING_USERNAME = "mlflow_tracking_username"
MLFLOW_TRACKING_PASSWORD = "mlflow_tracking_password"
KINDS = (WEBHOOK_SECRET, HUB_TOKEN)  # the two with routes of their own (/webhook-secret, /hub-token)
# Every name PUT /admin/tenants/{tenant}/secrets/{name} takes, and what the service uses it for.
NAMES = {
    WEBHOOK_SECRET: "signs the tenant's webhooks (Standard Webhooks); POST .../webhook-secret makes a random one",
    HUB_TOKEN: "the Hugging Face token of the tenant's Hub reads (datasets, tokenizers, base models)",
    WANDB_API_KEY: "the Weights & Biases API key of jobs with a `wandb` integration (FT_WANDB_MODE=online)",
    MLFLOW_TRACKING_TOKEN: "a bearer token sent to the MLflow server of jobs with an `mlflow` integration",
    MLFLOW_TRACKING_USERNAME: "the HTTP basic-auth user for that MLflow server (with mlflow_tracking_password)",
    MLFLOW_TRACKING_PASSWORD: "the HTTP basic-auth password for that MLflow server",
}
HUB_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_\-.]{8,400}$")
MAX_VALUE_CHARS = 4096


def _row(session: Session, tenant: str, kind: str) -> TenantSecret | None:
    return session.scalar(select(TenantSecret).where(TenantSecret.tenant == tenant, TenantSecret.kind == kind))


def get_secret(session: Session, tenant: str, kind: str) -> str | None:
    """The tenant's secret of this kind in clear, or None when none is set."""
    row = _row(session, tenant, kind)
    return secret_box.decrypt(row.value) if row is not None else None


def set_secret(session: Session, tenant: str, kind: str, value: str) -> TenantSecret:
    """Set (or replace: a rotation) the tenant's secret of this kind, encrypted; the caller commits."""
    row = _row(session, tenant, kind)
    if row is None:
        row = TenantSecret(tenant=tenant, kind=kind, value=secret_box.encrypt(value))
        session.add(row)
    else:
        row.value, row.created_at = secret_box.encrypt(value), utcnow()
    session.flush()
    return row


def delete_secret(session: Session, tenant: str, kind: str) -> bool:
    row = _row(session, tenant, kind)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def secrets_set(session: Session, tenant: str) -> dict[str, datetime]:
    """The names of the tenant's secrets and when each was set (never the values)."""
    query = select(TenantSecret.kind, TenantSecret.created_at).where(TenantSecret.tenant == _tenant(tenant))
    return dict(session.execute(query.order_by(TenantSecret.kind)).tuples().all())


def put_named_secret(session: Session, tenant: str, name: str, value: str) -> datetime:
    """PUT /admin/tenants/{tenant}/secrets/{name}: set or rotate one; returns when it was set."""
    return set_secret(session, _tenant(tenant), _name(name), _value(name, value)).created_at


def delete_named_secret(session: Session, tenant: str, name: str) -> None:
    if not delete_secret(session, _tenant(tenant), _name(name)):
        raise NotFound(f"tenant {tenant!r} has no {name} secret; see GET /admin/tenants/{tenant}/secrets")


def reencrypt_all(session: Session, tenant: str | None = None) -> tuple[int, int]:
    """Every row (of one tenant, or all) encrypted under FT_SECRETS_KEY's first key, clear rows too; returns
    (rewritten, total). A row no key decrypts raises SecretUnreadable and nothing is written."""
    query = select(TenantSecret) if tenant is None else select(TenantSecret).where(TenantSecret.tenant == tenant)
    rows = list(session.scalars(query.order_by(TenantSecret.id)))
    changed = 0
    for row in rows:
        if (value := secret_box.reencrypted(row.value)) is not None:
            row.value, changed = value, changed + 1  # created_at stays: the secret itself did not change
    session.flush()
    return changed, len(rows)


def _tenant(tenant: str) -> str:
    if not TENANT_NAME.fullmatch(tenant):
        raise Invalid(f"tenant: {tenant!r} is not a tenant name (letters, digits, `.`, `_`, `-`, up to 100)")
    return tenant


def _name(name: str) -> str:
    if name not in NAMES:
        raise Invalid(f"{name!r} is not a secret the service uses; use one of: {', '.join(NAMES)}")
    return name


def _value(name: str, value: str) -> str:
    if not value or len(value) > MAX_VALUE_CHARS or not value.isprintable():
        raise Invalid(f"value: 1 to {MAX_VALUE_CHARS} printable characters (no newlines or control characters)")
    if name == HUB_TOKEN and not HUB_TOKEN_CHARS.fullmatch(value):
        raise Invalid("value: a Hugging Face token is 8 to 400 letters, digits, `_`, `-` and `.` (`hf_...`)")
    return value


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks signing secret: `whsec_` and the standard base64 of 32 random bytes.

    Standard base64, not URL-safe: `standardwebhooks.Webhook(secret)` decodes it after the prefix, and would
    silently drop a URL-safe `-` or `_`, so the receiver's key would not be ours.
    """
    return f"whsec_{base64.b64encode(_random.token_bytes(32)).decode()}"

"""Per-tenant secrets an admin sets and the service uses: a webhook signing secret, a Hub token.

A secret is shown once, when it is made or set; afterwards the API says only whether one is set and since when.
"""

import base64
import secrets as _random

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import TenantSecret, utcnow

WEBHOOK_SECRET = "webhook_secret"
HUB_TOKEN = "hub_token"
KINDS = (WEBHOOK_SECRET, HUB_TOKEN)


def get_secret(session: Session, tenant: str, kind: str) -> str | None:
    """The tenant's secret of this kind, or None when none is set."""
    row = session.scalar(select(TenantSecret).where(TenantSecret.tenant == tenant, TenantSecret.kind == kind))
    return row.value if row is not None else None


def set_secret(session: Session, tenant: str, kind: str, value: str) -> TenantSecret:
    """Set (or replace: a rotation) the tenant's secret of this kind; the caller commits."""
    row = session.scalar(select(TenantSecret).where(TenantSecret.tenant == tenant, TenantSecret.kind == kind))
    if row is None:
        row = TenantSecret(tenant=tenant, kind=kind, value=value)
        session.add(row)
    else:
        row.value, row.created_at = value, utcnow()
    session.flush()
    return row


def delete_secret(session: Session, tenant: str, kind: str) -> bool:
    row = session.scalar(select(TenantSecret).where(TenantSecret.tenant == tenant, TenantSecret.kind == kind))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks signing secret: `whsec_` and the standard base64 of 32 random bytes.

    Standard base64, not URL-safe: `standardwebhooks.Webhook(secret)` decodes it after the prefix, and would
    silently drop a URL-safe `-` or `_`, so the receiver's key would not be ours.
    """
    return f"whsec_{base64.b64encode(_random.token_bytes(32)).decode()}"

"""What admin keys do: list, make and revoke API keys, see every tenant's usage, set its webhook secret."""

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import storage
from app.core.errors import Invalid, NotFound
from app.models import ApiKey, Dataset, Job, TenantSecret, utcnow
from app.tenants import limits, quotas, secrets
from app.tenants.auth import TENANT_NAME, create_key


def list_keys(session: Session, tenant: str | None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None and not TENANT_NAME.fullmatch(tenant):
        return []  # no key can belong to it
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def make_key(session: Session, name: str, tenant: str, is_admin: bool) -> tuple[ApiKey, str]:
    """A new key and its clear text, which is returned this once and never stored."""
    if not TENANT_NAME.fullmatch(tenant):
        raise Invalid("tenant: use letters, digits, `.`, `_` and `-` (up to 100), starting with a letter or digit")
    secret = create_key(session, name=name, tenant=tenant, is_admin=is_admin)
    lookup = secret.split("_")[1]
    return session.scalar(select(ApiKey).where(ApiKey.prefix == lookup)), secret


def get_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id) if storage.SAFE_ID.fullmatch(key_id) else None
    if key is None:
        raise NotFound(f"no key with id {key_id!r}; list them with GET /admin/keys")
    return key


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = get_key(session, key_id)
    key.revoked_at = key.revoked_at or utcnow()
    session.flush()
    return key


def tenants(session: Session) -> list[str]:
    """Every tenant that has a key, a job or a dataset."""
    names: set[str] = set()
    for model in (ApiKey, Job, Dataset):
        names.update(session.scalars(select(model.tenant).distinct()))
    return sorted(names)


def usage(session: Session, tenant: str) -> dict[str, int]:
    counts = select(Job.status, func.count()).where(Job.tenant == tenant).group_by(Job.status)
    jobs = dict(session.execute(counts).tuples().all())
    return {
        "queued_jobs": jobs.get("queued", 0),
        "running_jobs": jobs.get("running", 0) + jobs.get("cancelling", 0),
        "dataset_bytes": limits.dataset_bytes(session, tenant),
        "artifact_bytes": quotas.artifact_bytes(session, tenant),
    }


def _valid_tenant(tenant: str) -> str:
    if not TENANT_NAME.fullmatch(tenant):
        raise Invalid(f"tenant: {tenant!r} is not a tenant name (letters, digits, `.`, `_`, `-`, up to 100)")
    return tenant


def secret_since(session: Session, tenant: str, kind: str) -> datetime | None:
    """When the tenant's secret of this kind was made, or None: it has none."""
    query = select(TenantSecret.created_at).where(
        TenantSecret.tenant == _valid_tenant(tenant), TenantSecret.kind == kind
    )
    return session.scalar(query)


def rotate_webhook_secret(session: Session, tenant: str) -> tuple[datetime, str]:
    """A new signing secret for the tenant's webhooks, replacing any old one at once; returned this once."""
    value = secrets.new_webhook_secret()
    row = secrets.set_secret(session, _valid_tenant(tenant), secrets.WEBHOOK_SECRET, value)
    return row.created_at, value


def remove_webhook_secret(session: Session, tenant: str) -> None:
    """Delete it: the tenant's webhooks fall back to FT_WEBHOOK_SECRET (or go unsigned when that is unset)."""
    if not secrets.delete_secret(session, _valid_tenant(tenant), secrets.WEBHOOK_SECRET):
        raise NotFound(
            f"tenant {tenant!r} has no webhook secret; make one with POST /admin/tenants/{tenant}/webhook-secret"
        )


def set_hub_token(session: Session, tenant: str, token: str) -> datetime:
    """Store the Hub token the tenant's Hub reads are made with (replacing any old one); never shown again."""
    return secrets.set_secret(session, _valid_tenant(tenant), secrets.HUB_TOKEN, token).created_at


def remove_hub_token(session: Session, tenant: str) -> None:
    """Delete it: the tenant then reads public Hub repos only (never with the service's HF_TOKEN)."""
    if not secrets.delete_secret(session, _valid_tenant(tenant), secrets.HUB_TOKEN):
        raise NotFound(f"tenant {tenant!r} has no Hub token; set one with PUT /admin/tenants/{tenant}/hub-token")

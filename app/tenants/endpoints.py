"""Routes for admin keys (/admin: API keys, every tenant's usage, its secrets) and each tenant's /limits."""

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from app.core import http
from app.core.config import TENANT_LIMIT_NAMES, Settings
from app.core.db import SessionDep
from app.core.errors import Forbidden
from app.core.schemas import UtcDatetime
from app.models import ApiKey
from app.tenants import limits
from app.tenants import secrets as tenant_secrets
from app.tenants import service as admin_service
from app.tenants.auth import Caller, CallerDep
from app.tenants.schemas import (
    HubTokenSet,
    SecretCreated,
    SecretPublic,
    SecretSet,
    SecretsPublic,
    SecretStatus,
)
from app.tenants.secrets import HUB_TOKEN, WEBHOOK_SECRET


def require_admin(caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise Forbidden("only an admin key may do this (`ftctl keys create NAME --admin`)")
    return caller


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
limits_router = APIRouter(tags=["limits"])
TenantQuery = Annotated[str | None, Query(max_length=200, description="Only this tenant's.")]
TenantPath = Annotated[str, Path(max_length=100, description="The tenant (the team its keys act for).")]
SecretName = Annotated[
    str, Path(max_length=40, description=f"One of: {', '.join(tenant_secrets.NAMES)} (docs/security.md).")
]


class KeyPublic(BaseModel):
    """An API key as admins see it: never the key, nor its hash."""

    id: str
    name: str
    tenant: str
    prefix: str = Field(description="How the key starts (`ft_<lookup>_`), to recognise it.")
    is_admin: bool
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None

    @classmethod
    def of(cls, key: ApiKey) -> "KeyPublic":
        return cls(
            id=key.id,
            name=key.name,
            tenant=key.tenant,
            prefix=f"ft_{key.prefix}_",
            is_admin=key.is_admin,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class KeysPublic(BaseModel):
    data: list[KeyPublic]


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # `"is_admin": 0` is a schema violation, not a False (schemathesis ST201)
        json_schema_extra={"examples": [{"name": "ci", "tenant": "research", "is_admin": False}]},
    )

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$", description="A label.")
    tenant: str = Field(max_length=100, description="The team the key acts for.")
    is_admin: bool = Field(False, description="May see every tenant's things and manage keys.")


# The tenant's limits, one field per FT_TENANT_LIMITS name, typed as the FT_* setting it overrides.
LimitsPublic = create_model(
    "LimitsPublic", **{name: (Settings.model_fields[name].annotation, ...) for name in TENANT_LIMIT_NAMES}
)


class UsagePublic(BaseModel):
    queued_jobs: int
    running_jobs: int
    dataset_bytes: int
    artifact_bytes: int = Field(description="Adapters, checkpoints and exports, against max_artifact_storage_bytes.")


class TenantPublic(BaseModel):
    tenant: str
    limits: LimitsPublic
    usage: UsagePublic


class TenantsPublic(BaseModel):
    data: list[TenantPublic]


def tenant_public(session: SessionDep, tenant: str) -> TenantPublic:
    values = asdict(limits.limits_for(tenant))
    values.pop("tenant")
    usage = UsagePublic(**admin_service.usage(session, tenant))
    return TenantPublic(tenant=tenant, limits=LimitsPublic(**values), usage=usage)


@limits_router.get("/limits", response_model=TenantPublic)
def my_limits(caller: CallerDep, session: SessionDep) -> TenantPublic:
    """The caller's tenant: its quotas, bounds and rate limits, and what it uses now."""
    return tenant_public(session, caller.tenant)


@router.get("/keys", response_model=KeysPublic)
def list_keys(session: SessionDep, tenant: TenantQuery = None) -> KeysPublic:
    return KeysPublic(data=[KeyPublic.of(k) for k in admin_service.list_keys(session, tenant)])


@router.post("/keys", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, session: SessionDep, request: Request, response: Response) -> KeyCreated:
    """Make a key; the response is the only time the key is ever shown (`Location`: the key's record)."""
    key, secret = admin_service.make_key(session, body.name, body.tenant, body.is_admin)
    http.locate(request, response, "get_key", key_id=key.id)
    return KeyCreated(**KeyPublic.of(key).model_dump(), key=secret)


@router.get("/keys/{key_id}", response_model=KeyPublic)
def get_key(key_id: Annotated[str, Path(max_length=40)], session: SessionDep) -> KeyPublic:
    """A key's record (never the key): its tenant, whether it is an admin key, when it was revoked."""
    return KeyPublic.of(admin_service.get_key(session, key_id))


@router.post("/keys/{key_id}/revoke", response_model=KeyPublic)
def revoke_key(key_id: Annotated[str, Path(max_length=40)], session: SessionDep) -> KeyPublic:
    """Revoke a key at once (every API replica checks keys on each request)."""
    return KeyPublic.of(admin_service.revoke_key(session, key_id))


@router.get("/tenants", response_model=TenantsPublic)
def list_tenants(session: SessionDep) -> TenantsPublic:
    """Every tenant with its limits and what it uses now."""
    return TenantsPublic(data=[tenant_public(session, t) for t in admin_service.tenants(session)])


@router.get("/tenants/{tenant}/webhook-secret", response_model=SecretStatus)
def webhook_secret_status(tenant: TenantPath, session: SessionDep) -> SecretStatus:
    """Whether the tenant has its own webhook signing secret, and since when (never the secret)."""
    return SecretStatus.of(tenant, WEBHOOK_SECRET, admin_service.secret_since(session, tenant, WEBHOOK_SECRET))


@router.post("/tenants/{tenant}/webhook-secret", status_code=201, response_model=SecretCreated)
def rotate_webhook_secret(
    tenant: TenantPath, session: SessionDep, request: Request, response: Response
) -> SecretCreated:
    """Make (or rotate: the old one stops at once) the secret the tenant's webhooks are signed with.

    The response is the only time the secret is shown; receivers verify `X-FT-Signature` with it.
    """
    created_at, secret = admin_service.rotate_webhook_secret(session, tenant)
    http.locate(request, response, "webhook_secret_status", tenant=tenant)
    return SecretCreated(**SecretStatus.of(tenant, WEBHOOK_SECRET, created_at).model_dump(), secret=secret)


@router.delete("/tenants/{tenant}/webhook-secret", response_model=SecretStatus)
def delete_webhook_secret(tenant: TenantPath, session: SessionDep) -> SecretStatus:
    """Remove the tenant's secret: its webhooks are then signed with FT_WEBHOOK_SECRET (unsigned if unset)."""
    admin_service.remove_webhook_secret(session, tenant)
    return SecretStatus.of(tenant, WEBHOOK_SECRET, None)


@router.get("/tenants/{tenant}/hub-token", response_model=SecretStatus)
def hub_token_status(tenant: TenantPath, session: SessionDep) -> SecretStatus:
    """Whether the tenant has a Hub token, and since when (never the token)."""
    return SecretStatus.of(tenant, HUB_TOKEN, admin_service.secret_since(session, tenant, HUB_TOKEN))


@router.put("/tenants/{tenant}/hub-token", response_model=SecretStatus)
def set_hub_token(tenant: TenantPath, body: HubTokenSet, session: SessionDep) -> SecretStatus:
    """Set (or replace) the Hugging Face token the tenant's Hub reads use: its private datasets, tokenizers and
    base models, on the API and on the workers. The service's own HF_TOKEN is never used for a tenant."""
    return SecretStatus.of(tenant, HUB_TOKEN, admin_service.set_hub_token(session, tenant, body.token))


@router.delete("/tenants/{tenant}/hub-token", response_model=SecretStatus)
def delete_hub_token(tenant: TenantPath, session: SessionDep) -> SecretStatus:
    """Remove the tenant's Hub token: it then reads public repos only."""
    admin_service.remove_hub_token(session, tenant)
    return SecretStatus.of(tenant, HUB_TOKEN, None)


@router.get("/tenants/{tenant}/secrets", response_model=SecretsPublic)
def list_secrets(tenant: TenantPath, session: SessionDep) -> SecretsPublic:
    """The tenant's secrets that are set, with when each was set: never their values."""
    found = tenant_secrets.secrets_set(session, tenant)
    return SecretsPublic(data=[SecretPublic(tenant=tenant, name=n, set_at=at) for n, at in found.items()])


@router.put("/tenants/{tenant}/secrets/{name}", response_model=SecretPublic)
def put_secret(tenant: TenantPath, name: SecretName, body: SecretSet, session: SessionDep) -> SecretPublic:
    """Set or rotate (the old value stops at once) one of the tenant's secrets; stored encrypted, never shown again.

    Jobs read tracker credentials when they start: a running job keeps the value it started with."""
    set_at = tenant_secrets.put_named_secret(session, tenant, name, body.value)
    return SecretPublic(tenant=tenant, name=name, set_at=set_at)


@router.delete("/tenants/{tenant}/secrets/{name}", status_code=204)
def delete_secret(tenant: TenantPath, name: SecretName, session: SessionDep) -> Response:
    """Remove one of the tenant's secrets (404 when it is not set)."""
    tenant_secrets.delete_named_secret(session, tenant, name)
    return Response(status_code=204)

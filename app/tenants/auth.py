"""API keys: random, prefixed, shown once, stored as a SHA-256 hash and compared in constant time."""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.core import log_context
from app.core.db import SessionDep
from app.core.errors import Forbidden, Invalid, Unauthorized
from app.models import ApiKey

KEY_PREFIX = "ft_"
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Caller:
    key_id: str
    tenant: str
    is_admin: bool


def can_see(caller: Caller, tenant: str) -> bool:
    """A tenant's things are its own keys' to see; an admin key sees every tenant's."""
    return caller.is_admin or tenant == caller.tenant


def listing_tenant(caller: Caller, tenant: str | None) -> str | None:
    """The tenant a list shows: the caller's own unless an admin names another, or `*` for all (None)."""
    if tenant is None or tenant == caller.tenant:
        return caller.tenant
    if not caller.is_admin:
        raise Forbidden("only an admin key may list another tenant's things; leave out `tenant`")
    if tenant != "*" and not TENANT_NAME.fullmatch(tenant):
        raise Invalid(f"tenant: {tenant!r} is not a tenant name (letters, digits, `.`, `_`, `-`), nor `*`")
    return None if tenant == "*" else tenant


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough; a slow KDF would only slow every request.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, tenant: str | None = None, is_admin: bool = False) -> str:
    """Store a new key and return it in clear text: the only time it is ever seen."""
    lookup = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{lookup}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(name=name, tenant=tenant or name, prefix=lookup, key_hash=hash_key(key), is_admin=is_admin))
    session.flush()
    return key


# Every request runs this: one statement built once, read as a plain row on the session's connection. (Built per
# call and loaded as an ORM entity it cost three times the CPU, a fifth of GET /jobs/{id}: docs/operations.md.)
_KEY_BY_PREFIX = select(ApiKey.id, ApiKey.tenant, ApiKey.is_admin, ApiKey.key_hash).where(
    ApiKey.prefix == bindparam("prefix"), ApiKey.revoked_at.is_(None)
)


def authenticate(session: Session, authorization: str | None) -> Caller:
    hint = "send `Authorization: Bearer <key>`; make a key with `ftctl keys create NAME`"
    if not authorization:
        raise Unauthorized(f"missing API key: {hint}", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX) or key.count("_") < 2:
        raise Unauthorized(f"malformed Authorization header: {hint}", headers={"WWW-Authenticate": "Bearer"})
    lookup = key[len(KEY_PREFIX) :].split("_", 1)[0]
    row = session.connection().execute(_KEY_BY_PREFIX, {"prefix": lookup}).first()
    if row is None or not hmac.compare_digest(row.key_hash, hash_key(key)):
        raise Unauthorized("invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return Caller(key_id=row.id, tenant=row.tenant, is_admin=row.is_admin)


# The scheme as OpenAPI shows it (`bearerAuth` on every operation that needs a key). It does not decide anything:
# with auto_error=False it hands over None for a missing key and for a malformed header alike, and a caller
# should be told which of the two it sent, so `authenticate` reads the header itself.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="An `ft_...` API key (`ftctl keys create NAME`), sent as `Authorization: Bearer <key>`.",
)
BearerKey = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


def caller_of(session: Session, request: Request) -> Caller:
    """The caller the request's key belongs to (401 with `WWW-Authenticate: Bearer` for no valid key), bound to
    the request's log lines. For routes that check the key inside their own worker-thread call instead of
    depending on CallerDep (app/jobs/endpoints.py: one thread hop per request, not three)."""
    caller = authenticate(session, request.headers.get("authorization"))
    log_context.bind(tenant=caller.tenant)  # on the request's log lines from here on
    return caller


def current_caller(request: Request, session: SessionDep, _declared: BearerKey) -> Caller:
    """The caller the request's key belongs to (401 with `WWW-Authenticate: Bearer` for no valid key)."""
    return caller_of(session, request)


CallerDep = Annotated[Caller, Depends(current_caller)]

"""Which Hub repos and local models a tenant may use, and the Hub token its reads carry.

A tenant reads the Hub with its own token (`PUT /admin/tenants/{tenant}/hub-token`) or with none: never with the
service's `HF_TOKEN`, which huggingface_hub would send for `token=None`. So every Hub call passes
`HubAccess.hf_token`, a string or `False`. What a tenant may name at all is an allow-list of glob patterns:
`FT_TENANT_ACCESS[tenant]["hub"]` for Hub repos (datasets and base models, matched on `owner/name`) and
`["local_models"]` for directories under FT_MODELS_DIR; a tenant without its own list gets FT_HUB_ALLOW and
FT_LOCAL_MODELS_ALLOW.

No SQL here: worker/training uses this module too. app/datasets/tenant_access.py builds a tenant's HubAccess
from SQL (its token, its size limit); the worker's training code is given only a spec, so a task sets the job's
access for the code below it (`tenant_access.acting_for_job(job_id)`) and the loaders read it with `current()`.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from app.core.config import settings
from app.core.errors import Invalid


@dataclass(frozen=True)
class HubAccess:
    """Who reads the Hub: a tenant (None: no tenant, the defaults apply) and its own Hub token, if it has one."""

    tenant: str | None
    token: str | None = field(default=None, repr=False)
    max_bytes: int | None = None  # the tenant's max_upload_bytes; None: FT_MAX_UPLOAD_BYTES
    max_bytes_source: str = "FT_MAX_UPLOAD_BYTES"  # where an operator changes it

    @property
    def hf_token(self) -> str | Literal[False]:
        """What huggingface_hub's `token=` gets: the tenant's token, else False (None would mean HF_TOKEN)."""
        return self.token or False

    def size_limit(self) -> tuple[int, str]:
        """The most bytes of Hub data one split may be, and the setting that says so."""
        return (settings.max_upload_bytes if self.max_bytes is None else self.max_bytes), self.max_bytes_source


ANONYMOUS = HubAccess(tenant=None)


def _patterns(tenant: str | None, key: str, default: str) -> tuple[list[str], str]:
    own = settings.tenant_access.get(tenant, {}) if tenant is not None else {}
    if key in own:
        return list(own[key]), f"FT_TENANT_ACCESS[{tenant!r}][{key!r}]"
    return [p.strip() for p in default.split(",") if p.strip()], f"FT_{key.upper()}_ALLOW"


def hub_patterns(tenant: str | None) -> tuple[list[str], str]:
    """The tenant's Hub repo patterns and the setting they come from."""
    return _patterns(tenant, "hub", settings.hub_allow)


def local_model_patterns(tenant: str | None) -> tuple[list[str], str]:
    """The tenant's local model patterns (names under FT_MODELS_DIR) and the setting they come from."""
    return _patterns(tenant, "local_models", settings.local_models_allow)


def _matches(name: str, patterns: list[str]) -> bool:
    # Hub ids resolve case-insensitively, so `my-org/*` must also stop `My-Org/x`.
    return any(fnmatchcase(name.lower(), p.lower()) for p in patterns)


def _allowed_text(patterns: list[str], source: str) -> str:
    return f"{', '.join(patterns) or 'none'} ({source})"


def _who(tenant: str | None) -> str:
    return f"tenant {tenant!r}" if tenant is not None else "a job without a tenant"


def hub_repo_refusal(tenant: str | None, repo_id: str, what: str) -> str | None:
    """Why the tenant may not use this Hub repo (`what`: "dataset", "base_model"), or None when it may."""
    patterns, source = hub_patterns(tenant)
    if _matches(repo_id, patterns):
        return None
    return (
        f"{what} {repo_id!r} is not a Hub repo {_who(tenant)} may use; allowed: {_allowed_text(patterns, source)}. "
        "Ask an operator to allow it, or use an allowed one"
    )


def base_model_refusal(tenant: str | None, base_model: str, is_local: bool) -> str | None:
    """Why the tenant may not train on this base model (a local directory or a Hub id), or None when it may.

    One message for both kinds, so a refusal does not tell which local model names exist.
    """
    hub, hub_source = hub_patterns(tenant)
    local, local_source = local_model_patterns(tenant)
    if _matches(base_model, local if is_local else hub):
        return None
    return (
        f"base_model {base_model!r} is not a model {_who(tenant)} may use; allowed local models: "
        f"{_allowed_text(local, local_source)}, Hub repos: {_allowed_text(hub, hub_source)}. "
        "Ask an operator to allow it, or use an allowed one"
    )


def check_hub_repo(access: HubAccess, repo_id: str, what: str) -> None:
    """422 when the tenant may not use this Hub repo; checked before anything is asked of the Hub."""
    if (refusal := hub_repo_refusal(access.tenant, repo_id, what)) is not None:
        raise Invalid(refusal)


def local_model_dir(base_model: str) -> Path | None:
    """The directory in FT_MODELS_DIR by that name, or None: the name is a Hub id."""
    local = (settings.resolved_models_dir / base_model).resolve()
    return local if local.is_relative_to(settings.resolved_models_dir) and local.is_dir() else None


def check_base_model(access: HubAccess, base_model: str) -> Path | None:
    """422 when the tenant may not use this base model; else its directory in FT_MODELS_DIR (None: a Hub id)."""
    local = local_model_dir(base_model)
    if (refusal := base_model_refusal(access.tenant, base_model, is_local=local is not None)) is not None:
        raise Invalid(refusal)
    return local


# --- the worker: the access of the job being run, for loaders that are given only its spec ---

_current: ContextVar[HubAccess] = ContextVar("hub_access", default=ANONYMOUS)


def current() -> HubAccess:
    """The access set by `acting_for`; outside one, no tenant and no token (the defaults' allow-lists)."""
    return _current.get()


@contextmanager
def acting_for(access: HubAccess) -> Iterator[HubAccess]:
    """Run the block's Hub reads and allow-list checks as `access`."""
    reset = _current.set(access)
    try:
        yield access
    finally:
        _current.reset(reset)

"""Per-tenant quotas, bounds and rate limits: what one team may hold, run, submit and send.

Every limit is a process setting (`FT_MAX_QUEUED_JOBS`, ...) that FT_TENANT_LIMITS may override per tenant.
How each is refused, consistently (docs/security.md):
- a spec outside the tenant's bounds (steps, epochs, sequence length, LoRA rank): 422 naming the field;
- an upload over the tenant's size limit: 413;
- a quota already used up (queued jobs, dataset storage) or a rate limit: 429 with `limit`, `allowed` and
  `usage` beside `detail`, and `Retry-After` where waiting helps; every response of a rate-limited route
  carries RateLimit-Limit/-Remaining/-Reset/-Policy (RateLimitHeaders);
- running jobs: never refused; a worker leaves a job queued while its tenant has enough running.
What a tenant holds open (worker calls in flight, event streams) is counted in app/tenants/slots.py.
"""

import logging
import math
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Annotated, Any

import redis
from fastapi import Depends, Request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import settings
from app.core.errors import TooManyRequests
from app.models import Dataset, Job
from app.tenants.auth import Caller, current_caller

log = logging.getLogger(__name__)
RATE_WINDOW_S = 60
QUEUE_RETRY_AFTER_S = 30  # a queued job usually starts or ends within this; asking sooner is pointless
ACTIVE = ("running", "cancelling")


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits: the FT_* settings, with its FT_TENANT_LIMITS overrides applied."""

    tenant: str
    max_upload_bytes: int
    max_running_jobs: int
    max_queued_jobs: int
    max_dataset_storage_bytes: int
    max_training_steps: int
    max_epochs: float
    max_seq_length: int
    max_lora_rank: int
    submit_rate_per_minute: int
    upload_rate_per_minute: int
    inference_rate_per_minute: int
    max_concurrent_calls: int
    max_event_streams: int
    max_artifact_storage_bytes: int
    max_checkpoints_per_job: int
    max_priority: int

    def source(self, name: str) -> str:
        """Where an operator changes this limit: the tenant's override, else the process setting."""
        if name in settings.tenant_limits.get(self.tenant, {}):
            return f"FT_TENANT_LIMITS[{self.tenant!r}]"
        return f"FT_{name.upper()}"


def limits_for(tenant: str) -> TenantLimits:
    overrides = settings.tenant_limits.get(tenant, {})
    values: dict[str, object] = {"tenant": tenant}
    for f in fields(TenantLimits):
        if f.name != "tenant":
            default = getattr(settings, f.name)
            values[f.name] = type(default)(overrides.get(f.name, default))
    return TenantLimits(**values)  # type: ignore[arg-type]


# --- usage ---


def queued_jobs(session: Session, tenant: str) -> int:
    return session.scalar(select(func.count()).where(Job.tenant == tenant, Job.status == "queued")) or 0


def running_jobs(session: Session, tenant: str) -> int:
    return session.scalar(select(func.count()).where(Job.tenant == tenant, Job.status.in_(ACTIVE))) or 0


def dataset_bytes(session: Session, tenant: str) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.tenant == tenant)))


def quota_error(limits: TenantLimits, name: str, usage: int, message: str, retry_after: int | None) -> TooManyRequests:
    allowed = getattr(limits, name)
    return TooManyRequests(
        f"{message} (limit {name}={allowed:,}, set by {limits.source(name)})",
        extra={"limit": name, "allowed": allowed, "usage": usage},
        headers={"Retry-After": str(retry_after)} if retry_after else None,
    )


# --- checks at submit and upload ---


def check_queued_quota(session: Session, tenant: str) -> None:
    """429 when the tenant already has as many queued jobs as it may."""
    limits = limits_for(tenant)
    queued = queued_jobs(session, tenant)
    if queued >= limits.max_queued_jobs:
        message = f"tenant {tenant!r} has {queued} queued jobs; wait for some to start, or cancel some"
        raise quota_error(limits, "max_queued_jobs", queued, message, QUEUE_RETRY_AFTER_S)


def check_storage_quota(session: Session, tenant: str, new_bytes: int) -> None:
    """429 when storing `new_bytes` more would take the tenant's datasets over its storage quota."""
    limits = limits_for(tenant)
    used = dataset_bytes(session, tenant)
    if used + new_bytes > limits.max_dataset_storage_bytes:
        message = f"tenant {tenant!r} holds {used:,} bytes of datasets; this {new_bytes:,}-byte upload does not fit"
        raise quota_error(limits, "max_dataset_storage_bytes", used, message, None)


# --- rate limits (Redis, so every API replica counts together) ---


@dataclass(frozen=True)
class RateFigures:
    """Where a tenant stands against one rate limit, as the RateLimit-* headers say it."""

    limit: int
    remaining: int
    reset_s: int  # seconds until the window frees a request (the IETF draft's delta-seconds)

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f"{self.limit};w={RATE_WINDOW_S}",
        }


@lru_cache(maxsize=4)
def _limiter(redis_url: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix="ft:rate", socket_timeout=10))


def rate_limiter() -> MovingWindowRateLimiter:
    """The process's limiter on FT_REDIS_URL.

    A moving window (one timestamp per request in a Redis list, trimmed to the limit) rather than the sliding
    window counter: it is exact, so no 60-second span ever holds more than the limit, while the counter only
    estimates the previous window's share and can still let a burst through. Its cost is one Lua call per hit
    and at most `limit` list entries per tenant and action (120 by default), which Redis does not notice.
    """
    return _limiter(settings.redis_url)


def rate_item(allowed: int) -> RateLimitItem:
    """The limit as the `limits` library counts it: `allowed` requests in any RATE_WINDOW_S seconds."""
    return RateLimitItemPerMinute(allowed)


def hit_rate_limit(tenant: str, action: str, what: str | None = None) -> RateFigures | None:
    """Count one `action` (submit, upload, inference) for the tenant; 429 once the last minute holds its limit.

    `what` names the request when one budget covers several kinds (inference: generate, predict, evaluations,
    exports). A refused request is not counted. Returns the figures for the RateLimit-* headers, or None when
    Redis could not be asked: the limit then fails open (logged), since the SQL quotas still bound what a tenant
    can hold.
    """
    limits = limits_for(tenant)
    name = f"{action}_rate_per_minute"
    allowed: int = getattr(limits, name)
    item, limiter = rate_item(allowed), rate_limiter()
    try:
        accepted = limiter.hit(item, action, tenant)
        stats = limiter.get_window_stats(item, action, tenant)
    except redis.RedisError as exc:
        log.warning("rate limit %s not checked for tenant %r: Redis error %s", name, tenant, exc)
        return None
    reset_s = min(RATE_WINDOW_S, max(1, math.ceil(stats.reset_time - time.time())))  # whole seconds, rounded up
    figures = RateFigures(allowed, stats.remaining, reset_s)
    if accepted:
        return figures
    used = allowed - stats.remaining
    sent = f"{used} {action} requests in the last minute"
    if what:  # one budget for several kinds of request: say which was refused
        sent = f"{used} worker calls (generate, predict, evaluations, exports, chat) in the last minute; {what} refused"
    message = f"tenant {tenant!r} sent {sent}; retry in {figures.reset_s}s"
    refused = quota_error(limits, name, used, message, figures.reset_s)
    refused.headers = {**figures.headers(), **(refused.headers or {})}
    raise refused


def _count(request: Request, tenant: str, action: str, what: str | None = None) -> None:
    figures = hit_rate_limit(tenant, action, what)
    if figures is not None:  # RateLimitHeaders puts them on the response, whatever the route answers
        request.state.rate_limit = figures


def inference_rate(action: str) -> Any:
    """A route dependency: count one worker call (`action`: generate, predict, ...) against inference_rate."""

    def check(request: Request, caller: Annotated[Caller, Depends(current_caller)]) -> None:
        _count(request, caller.tenant, "inference", what=action)

    return Depends(check)


def submit_rate(request: Request, caller: Annotated[Caller, Depends(current_caller)]) -> None:
    _count(request, caller.tenant, "submit")


def upload_rate(request: Request, caller: Annotated[Caller, Depends(current_caller)]) -> None:
    _count(request, caller.tenant, "upload")


SubmitRate = Depends(submit_rate)
UploadRate = Depends(upload_rate)


class RateLimitHeaders:
    """Adds RateLimit-* to every response of a rate-limited route: 2xx, 4xx and streamed bodies alike.

    The rate dependencies run before the route and leave their figures in `scope["state"]`; this pure ASGI
    middleware adds them when the response starts, so they also reach errors raised later in the route and
    streaming responses. A response that already carries them (the rate limit's own 429) is left as it is.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_figures(message: Message) -> None:
            figures: RateFigures | None = state.get("rate_limit")
            if message["type"] == "http.response.start" and figures is not None:
                headers = MutableHeaders(scope=message)
                if "ratelimit-limit" not in headers:
                    for header, value in figures.headers().items():
                        headers[header] = value
            await send(message)

        await self.app(scope, receive, send_with_figures)


_FIGURE_HEADERS = {
    "RateLimit-Limit": "The tenant's limit for this kind of request, per minute.",
    "RateLimit-Remaining": "Requests left in the last minute's window.",
    "RateLimit-Reset": "Seconds until the window frees a request.",
    "RateLimit-Policy": "The limit and its window in seconds (`120;w=60`).",
}
# For the routes behind a rate limit or quota: the OpenAPI schema declares their 429 and its headers.
LIMITED = {
    429: {
        "description": "A rate limit or quota; `Retry-After` says when to try again, if waiting helps.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}},
            **{
                h: {"description": d, "schema": {"type": "string" if h == "RateLimit-Policy" else "integer"}}
                for h, d in _FIGURE_HEADERS.items()
            },
        },
    }
}


# --- running jobs, enforced where a job starts ---


def defer_if_tenant_busy(session: Session, job_id: str) -> bool:
    """True (and the job left queued, to be re-sent by the reconciler) when its tenant runs all it may.

    Checked by a worker just before it claims a job. Two workers claiming at the same instant can each see
    a free slot, so the limit can be passed by one job per extra worker for a moment; it is a fair-share
    limit, not a security boundary.
    """
    job = session.get(Job, job_id)
    if job is None or job.status != "queued":
        return False
    limits = limits_for(job.tenant)
    running = running_jobs(session, job.tenant)
    if running < limits.max_running_jobs:
        return False
    # enqueued_at = NULL hands the job back to the reconciler, which sends it again on its next round.
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(enqueued_at=None))
    session.commit()
    log.info("job %s waits: tenant %r runs %d of %d jobs", job_id, job.tenant, running, limits.max_running_jobs)
    return True

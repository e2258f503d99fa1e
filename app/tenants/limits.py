"""Per-tenant quotas, bounds and rate limits: what one team may hold, run, submit and send.

Every limit is a process setting (`FT_MAX_QUEUED_JOBS`, ...) that FT_TENANT_LIMITS may override per tenant.
How each is refused, consistently (docs/security.md):
- a spec outside the tenant's bounds (steps, epochs, sequence length, LoRA rank): 422 naming the field;
- an upload over the tenant's size limit: 413;
- a quota already used up (queued jobs, dataset storage) or a rate limit: 429 with `limit`, `allowed` and
  `usage` beside `detail`, and `Retry-After` where waiting helps;
- running jobs: never refused; a worker leaves a job queued while its tenant has enough running.
What a tenant holds open (worker calls in flight, event streams) is counted in app/tenants/slots.py.
"""

import logging
import time
from dataclasses import dataclass, fields
from typing import Annotated, Any

import redis
from fastapi import Depends
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.broker.events import redis_client
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


def hit_rate_limit(tenant: str, action: str, now: float | None = None, what: str | None = None) -> None:
    """Count one `action` (submit, upload) for the tenant in this minute's window; 429 once over its limit.

    `what` names the request when one budget covers several kinds (inference: generate, predict, evaluations,
    exports). A fixed window per tenant and action: one INCR per request. At a window's edge a tenant can get up to
    twice its rate in a short burst; the quotas above bound what that burst can hold.
    """
    limits = limits_for(tenant)
    name = f"{action}_rate_per_minute"
    allowed: int = getattr(limits, name)
    now = time.time() if now is None else now
    window = int(now // RATE_WINDOW_S)
    key = f"ft:rate:{action}:{window}:{tenant}"
    try:
        pipe = redis_client().pipeline()
        pipe.incr(key)
        pipe.expire(key, RATE_WINDOW_S * 2)
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:  # fail open: the SQL quotas still bound what a tenant can hold
        log.warning("rate limit %s not checked for tenant %r: Redis error %s", name, tenant, exc)
        return
    if count > allowed:
        retry = max(1, int((window + 1) * RATE_WINDOW_S - now + 0.999))
        sent = f"{count - 1} {action} requests this minute"
        if what:  # one budget for several kinds of request: say which was refused
            sent = f"{count - 1} worker calls (generate, predict, evaluations, exports) this minute; {what} refused"
        message = f"tenant {tenant!r} sent {sent}; retry in {retry}s"
        raise quota_error(limits, name, count - 1, message, retry)


def inference_rate(action: str) -> Any:
    """A route dependency: count one worker call (`action`: generate, predict, ...) against inference_rate."""

    def check(caller: Annotated[Caller, Depends(current_caller)]) -> None:
        hit_rate_limit(caller.tenant, "inference", what=action)

    return Depends(check)


def submit_rate(caller: Annotated[Caller, Depends(current_caller)]) -> None:
    hit_rate_limit(caller.tenant, "submit")


def upload_rate(caller: Annotated[Caller, Depends(current_caller)]) -> None:
    hit_rate_limit(caller.tenant, "upload")


SubmitRate = Depends(submit_rate)
UploadRate = Depends(upload_rate)
# For the routes behind a rate limit or quota: the OpenAPI schema declares their 429.
LIMITED = {429: {"description": "A rate limit or quota; `Retry-After` says when to try again, if waiting helps."}}


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

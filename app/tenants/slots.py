"""What a tenant holds open: worker calls in flight and event streams, each a slot counted across replicas.

A slot is a member of a Redis sorted set per tenant, scored by when it expires: a replica or worker that dies
holding one cannot keep it for long. Refused like the other limits (app/tenants/limits.py): 429 with `limit`,
`allowed`, `usage` and `Retry-After`.
- max_concurrent_calls: generate and predict calls hold a slot from when they are sent until the worker records
  their end (app/broker/calls.py `finish`), expiring FT_INFERENCE_TIMEOUT_S + CALL_SLOT_MARGIN_S after they
  were sent; exports and evaluations count by their queued and running rows. One budget for all four.
- max_event_streams: a stream holds a slot while open, refreshed as it reads, released when it ends.
"""

import logging
import time
from datetime import timedelta

import redis
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.broker.calls import slot_key as call_slot_key
from app.broker.events import async_redis_client, redis_client
from app.core.config import settings
from app.core.errors import TooManyRequests
from app.models import Evaluation, Export, Job, utcnow
from app.tenants.limits import TenantLimits, limits_for, quota_error

log = logging.getLogger(__name__)
CALL_SLOT_MARGIN_S = 30  # a call's slot outlives the API's longest wait by this much, then expires unfreed
CALLS_RETRY_AFTER_S = 5  # a generate or predict call usually ends within seconds
QUEUED_ROW_COUNTS_S = 3600  # a queued export/evaluation older than this most likely lost its message: not counted
STREAM_SLOT_TTL_S = 60  # an open stream refreshes its slot well within this (app/observability/stream.py)
STREAMS_RETRY_AFTER_S = 30

# Drop expired slots, then take one unless `used` (live slots + ARGV[4] counted elsewhere) reaches the limit.
# Returns -1 when taken, else the usage. One script, so two replicas cannot both take the last slot.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local used = redis.call('ZCARD', KEYS[1]) + tonumber(ARGV[4])
if used >= tonumber(ARGV[3]) then return used end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return -1
"""


async def _take_slot(key: str, member: str, allowed: int, ttl_s: float, elsewhere: int = 0) -> int | None:
    """None when the slot was taken; else the usage that refused it. Fails open, as the rate limits do."""
    now = time.time()
    args = (now, now + ttl_s, allowed, elsewhere, member, int(ttl_s) + 1)
    try:
        used = int(await async_redis_client().eval(_TAKE_SLOT, 1, key, *args))
    except redis.RedisError as exc:
        log.warning("slot %s not checked: Redis error %s", key, exc)
        return None
    return None if used < 0 else used


async def release_slot(key: str, member: str) -> None:
    try:
        await async_redis_client().zrem(key, member)
    except redis.RedisError as exc:  # it expires by itself
        log.warning("slot %s of %s not released: Redis error %s", member, key, exc)


def call_rows_in_flight(session: Session, tenant: str) -> int:
    """The tenant's exports and evaluations queued or running on a worker (their rows are their slots)."""
    since = utcnow() - timedelta(seconds=QUEUED_ROW_COUNTS_S)
    total = 0
    for row in (Export, Evaluation):
        live = or_(row.status == "running", and_(row.status == "queued", row.created_at >= since))
        query = select(func.count()).select_from(row).join(Job, Job.id == row.job_id).where(Job.tenant == tenant, live)
        total += session.scalar(query) or 0
    return total


def _calls_error(limits: TenantLimits, used: int) -> TooManyRequests:
    message = (
        f"tenant {limits.tenant!r} has {used} worker calls in flight (generate, predict, exports, evaluations); "
        "wait for one to end"
    )
    return quota_error(limits, "max_concurrent_calls", used, message, CALLS_RETRY_AFTER_S)


async def take_call_slot(tenant: str, call_id: str, rows_in_flight: int) -> None:
    """429 when the tenant's calls in flight (slots, plus `rows_in_flight` exports and evaluations) are at its limit.

    The slot is freed when the worker records the call's end (calls.finish), or expires once the API's wait
    (FT_INFERENCE_TIMEOUT_S) is long over."""
    limits = limits_for(tenant)
    ttl = settings.inference_timeout_s + CALL_SLOT_MARGIN_S
    used = await _take_slot(call_slot_key(tenant), call_id, limits.max_concurrent_calls, ttl, rows_in_flight)
    if used is not None:
        raise _calls_error(limits, used)


def check_calls_in_flight(session: Session, tenant: str) -> None:
    """429 before a new export or evaluation when the tenant's calls in flight are at its limit."""
    limits = limits_for(tenant)
    used = call_rows_in_flight(session, tenant)
    try:
        used += int(redis_client().zcount(call_slot_key(tenant), time.time(), "+inf"))
    except redis.RedisError as exc:
        log.warning("worker call slots of tenant %r not counted: Redis error %s", tenant, exc)
    if used >= limits.max_concurrent_calls:
        raise _calls_error(limits, used)


def stream_slot_key(tenant: str) -> str:
    return f"ft:streams:slots:{tenant}"


async def take_stream_slot(tenant: str, stream_id: str) -> None:
    """429 when the tenant already holds as many open event streams as it may (across every replica)."""
    limits = limits_for(tenant)
    used = await _take_slot(stream_slot_key(tenant), stream_id, limits.max_event_streams, STREAM_SLOT_TTL_S)
    if used is not None:
        message = f"tenant {tenant!r} has {used} event streams open; close one (or poll with follow=false)"
        raise quota_error(limits, "max_event_streams", used, message, STREAMS_RETRY_AFTER_S)


async def refresh_stream_slot(tenant: str, stream_id: str) -> None:
    """An open stream's heartbeat: push its slot's expiry on (XX: a slot already released stays released)."""
    try:
        await async_redis_client().zadd(stream_slot_key(tenant), {stream_id: time.time() + STREAM_SLOT_TTL_S}, xx=True)
    except redis.RedisError as exc:
        log.warning("stream slot %s not refreshed: Redis error %s", stream_id, exc)


async def release_call_slot(tenant: str, call_id: str) -> None:
    """For a call that was never sent (the broker refused it)."""
    await release_slot(call_slot_key(tenant), call_id)

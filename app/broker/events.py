"""A job's live events in Redis: an ordered, replayable stream per job, plus the cancel flag; the Redis clients.

Async code (the API's routes and event streams) shares two pooled `redis.asyncio` clients per event loop (one
loop per API process): one for short commands, and one for event streams, whose blocking XREADs each hold a
connection for seconds and so must not starve the short ones.
"""

import asyncio
import json
import weakref
from functools import cache
from typing import Any

import redis
import redis.asyncio as aioredis

from app.core.config import settings

STREAM_MAXLEN = 200_000  # events kept per job; SQL keeps the full metric record
SHORT_CONNECTIONS = 64  # short commands (call polls, limit slots) in flight at once per process; more wait
POOL_WAIT_S = 10  # how long a command waits for a free pooled connection before failing
STREAM_SOCKET_TIMEOUT_S = 60  # above any XREAD BLOCK (app/observability/stream.py): a slow answer, not a dead link
STREAM_CLIENT_NAME = "ft-api-events"  # CLIENT LIST shows the event streams' pooled connections by this name

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


@cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=10)


def _async_client(kind: str, **pool: Any) -> aioredis.Redis:
    # Per running loop: an asyncio connection belongs to the loop that opened it (tests run several loops).
    clients = _async_clients.setdefault(asyncio.get_running_loop(), {})
    if kind not in clients:
        connections = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, decode_responses=True, timeout=POOL_WAIT_S, **pool
        )
        clients[kind] = aioredis.Redis(connection_pool=connections)
    return clients[kind]


def async_redis_client() -> aioredis.Redis:
    """The process's shared client for short commands from async code: waits on worker calls, limit slots."""
    return _async_client("short", max_connections=SHORT_CONNECTIONS, socket_timeout=10)


def stream_redis_client() -> aioredis.Redis:
    """The process's shared client for event streams: one pooled connection per stream blocked in XREAD, at most
    FT_EVENT_STREAM_CONNECTIONS (stream.py refuses a stream beyond that rather than wait for one)."""
    return _async_client(
        "streams",
        max_connections=settings.event_stream_connections,
        socket_timeout=STREAM_SOCKET_TIMEOUT_S,
        client_name=STREAM_CLIENT_NAME,
    )


def stream_key(job_id: str) -> str:
    return f"ft:job:{job_id}:events"


def cancel_key(job_id: str) -> str:
    return f"ft:job:{job_id}:cancel"


def publish(job_id: str, kind: str, data: dict[str, Any], client: redis.Redis | None = None) -> str:
    """Append one event (status, metric, eval, checkpoint, warning) and return its stream id."""
    client = client or redis_client()
    return client.xadd(
        stream_key(job_id),
        {"type": kind, "data": json.dumps(data, default=str)},
        maxlen=STREAM_MAXLEN,
        approximate=True,
    )


def read_events(
    job_id: str, after: str = "0", block_ms: int | None = None, count: int = 500
) -> list[tuple[str, str, dict[str, Any]]]:
    """Events after stream id `after`, as (id, type, data); blocks up to block_ms for new ones."""
    result = redis_client().xread({stream_key(job_id): after}, count=count, block=block_ms)
    events = []
    for _key, entries in result or []:
        for event_id, fields in entries:
            events.append((event_id, fields["type"], json.loads(fields["data"])))
    return events


def request_cancel(job_id: str) -> None:
    redis_client().set(cancel_key(job_id), "1", ex=7 * 24 * 3600)

"""A job's live events in Redis: an ordered, replayable stream per job, plus the cancel flag."""

import json
from functools import cache
from typing import Any

import redis

from app.core.config import settings

STREAM_MAXLEN = 200_000  # events kept per job; SQL keeps the full metric record


@cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=10)


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

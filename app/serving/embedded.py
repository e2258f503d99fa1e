"""The embedded backend's API side: queue the request for the inference worker, wake it, read its answer stream.

The request goes into app/broker/serving.py's queue (bounded by FT_SERVING_MAX_QUEUE, fair across tenants), then
a `finetune.serve` task with no arguments wakes a worker, which drains the queue in batches (worker/serving.py);
a wake-up that finds the queue empty costs nothing. The answer is read from the call's Redis stream with blocking
XREADs on the event-stream client (a connection held per waiting read, as a job's event stream holds one, so the
short-command pool is never starved), entry by entry as the worker publishes them, until `usage`, `error` or the
deadline. No thread is held while waiting.
"""

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi.concurrency import run_in_threadpool

from app.broker import calls
from app.broker.events import redis_client, stream_redis_client
from app.broker.serving import QueueFull, ServingQueue, answer_key
from app.broker.tasks import SERVE_TASK
from app.core.config import settings
from app.serving.backend import ServingRequest

log = logging.getLogger(__name__)
BLOCK_S = 5.0  # one XREAD waits at most this long (under the stream client's 60 s socket timeout)
GRACE_S = 2.0  # the worker ends a call at its deadline itself; its last entries may land a moment later
ENDS = ("usage", "error")


def error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "kind": kind, "message": message}


def _enqueue_and_wake(queue: ServingQueue, request: ServingRequest) -> None:
    queue.enqueue(request.record())
    try:
        calls.send(SERVE_TASK, expires_s=settings.serving_timeout_s)  # a late wake-up finds the request expired
    except calls.WorkerUnavailable:
        queue.finish(request.id)
        raise


async def read_answer(call_id: str, until: float) -> AsyncIterator[dict[str, Any]]:
    """The call's answer entries as they are published, ending after `usage` or `error`; a `timeout` error once
    `until` (a Unix time) passes first."""
    client, key, last = stream_redis_client(), answer_key(call_id), "0-0"
    while (remaining := until - time.time()) > 0:
        reply = await client.xread({key: last}, count=256, block=max(1, int(min(remaining, BLOCK_S) * 1000)))
        for _stream, items in reply or []:
            for entry_id, fields in items:
                last = entry_id
                entry = json.loads(fields["data"])
                yield entry
                if entry.get("type") in ENDS:
                    return
    timeout = f"{settings.serving_timeout_s:g}"
    yield error("timeout", f"the model did not answer within {timeout} s (FT_SERVING_TIMEOUT_S); try again")


class EmbeddedBackend:
    """FT_SERVING_BACKEND=embedded (the default): the inference worker generates."""

    async def generate(self, request: ServingRequest) -> AsyncIterator[dict[str, Any]]:
        queue = ServingQueue(redis_client())
        try:
            await run_in_threadpool(_enqueue_and_wake, queue, request)
        except QueueFull as exc:
            yield error("overloaded", f"{exc.waiting} completions are already waiting (FT_SERVING_MAX_QUEUE)")
            return
        except (calls.WorkerUnavailable, redis.RedisError) as exc:
            log.warning("completion %s not queued: %s", request.id, exc)
            yield error("internal", "the task queue is unreachable; try again shortly")
            return
        try:
            async for entry in read_answer(request.id, request.deadline + GRACE_S):
                yield entry
        except redis.RedisError as exc:
            log.warning("completion %s: its answer could not be read: %s", request.id, exc)
            yield error("internal", "the answer could not be read from Redis; try again shortly")
        finally:
            _give_up(queue, request.id)


def _give_up(queue: ServingQueue, call_id: str) -> None:
    """Whatever ended the wait (the answer, a timeout, a client that hung up): a request not yet taken is dropped,
    so a worker does not generate for nobody. A quick call, made even while the waiting task is being cancelled."""
    try:
        queue.finish(call_id)
    except redis.RedisError as exc:  # it stops counting once its deadline passes
        log.warning("completion %s not taken off the queue: %s", call_id, exc)

"""Run a task on a worker and wait for its answer (or poll for it later): generate, predict, exports.

The API sends the task by name (it never imports worker code, torch or transformers). A call's state lives in
Redis under its id for CALL_TTL_S: `queued` when sent, then what the worker writes with `finish()`. Celery has
no result backend here, so this small record is the answer channel, readable by any API replica. The record
names the tenant whose job it runs on: the API shows a call only to that tenant's job, and the worker checks it
against the job before it runs anything.

While a call runs it holds one of its tenant's slots (FT_MAX_CONCURRENT_CALLS, app/tenants/limits.py) in the
sorted set `slot_key(tenant)`; `finish()` gives the slot back when the call ends.

Tasks go to FT_INFERENCE_QUEUE when it is set (a worker started with `-Q` it), else to the training queue, where
they wait behind a running training job.
"""

import asyncio
import json
import secrets
import time
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.broker.events import async_redis_client, redis_client
from app.broker.queue import celery_client
from app.core.config import settings
from app.core.errors import DomainError
from app.models import utcnow

CALL_TTL_S = 3600
POLL_EVERY_S = 0.1
ENDED = ("succeeded", "failed")


class WorkerFailed(DomainError):
    """The worker ran the call and it failed (bad gateway: the fault is behind the API)."""

    status_code = 502


class WorkerUnreachable(DomainError):
    """The task queue would not take the call; nothing was run."""

    status_code = 503


class WorkerTimeout(DomainError):
    """No worker answered in time."""

    status_code = 504


class WorkerUnavailable(Exception):
    """The broker would not take the task."""


def task_queue() -> str:
    return settings.inference_queue or settings.training_queue


def call_key(call_id: str) -> str:
    return f"ft:call:{call_id}"


def slot_key(tenant: str) -> str:
    """The tenant's calls in flight: call id -> the time its slot expires (app/tenants/limits.py)."""
    return f"ft:calls:slots:{tenant}"


def new_call_id() -> str:
    return f"gen_{secrets.token_hex(12)}"


def send(task: str, *args: Any, expires_s: float | None = None) -> None:
    """Send a task by name to the inference (or training) queue; WorkerUnavailable when the broker is down.

    `expires_s`: a worker that receives the message later drops it unrun (nobody waits for the answer any more)."""
    try:
        celery_client().send_task(task, args=list(args), queue=task_queue(), retry=False, expires=expires_s)
    except Exception as exc:
        raise WorkerUnavailable(str(exc)) from exc


def send_recorded(session: Session, task: str, row: Any, what: str) -> None:
    """Send the task for a committed request row (an export, an evaluation); when the broker is down, record the
    row as failed and answer 503 saying to try the `what` again."""
    try:
        send(task, row.id)
    except WorkerUnavailable:
        row.status, row.error_message, row.finished_at = "failed", "the task queue was unreachable", utcnow()
        session.commit()
        raise WorkerUnreachable(f"the task queue is unreachable; try the {what} again shortly") from None


async def start(task: str, call_id: str, job_id: str, tenant: str, payload: dict[str, Any]) -> None:
    """Record a queued call of `tenant`'s job and send it (WorkerUnavailable when the broker is down)."""
    state = {"id": call_id, "job_id": job_id, "tenant": tenant, "status": "queued", "created_at": time.time()}
    await async_redis_client().set(call_key(call_id), json.dumps(state), ex=CALL_TTL_S)
    # Publishing is a quick blocking socket write (Celery has no asyncio client); not worth holding the loop for.
    await run_in_threadpool(send, task, call_id, job_id, payload, expires_s=CALL_TTL_S)  # answer outlives record


def read(call_id: str) -> dict[str, Any] | None:
    raw = redis_client().get(call_key(call_id))
    return json.loads(raw) if raw else None


async def read_async(call_id: str) -> dict[str, Any] | None:
    raw = await async_redis_client().get(call_key(call_id))
    return json.loads(raw) if raw else None


def owned(state: dict[str, Any] | None, job_id: str, tenant: str) -> dict[str, Any] | None:
    """The state if it is a call on this job of this tenant, else None (told apart from an unknown id by no one)."""
    if state is None or state.get("job_id") != job_id or state.get("tenant") != tenant:
        return None
    return state


async def wait(call_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The call's state once it has ended (succeeded or failed), or its last state when timeout_s passes.

    Async: a waiting request holds no thread (the API's thread pool also runs authentication and SQL)."""
    deadline = time.monotonic() + timeout_s
    state = await read_async(call_id)
    while state is not None and state["status"] not in ENDED and time.monotonic() < deadline:
        await asyncio.sleep(POLL_EVERY_S)
        state = await read_async(call_id)
    return state


def finish(call_id: str, status: str, **data: Any) -> None:
    """The worker's side: record the outcome (`results`, or an `error` {type, message}) for the waiting API."""
    state = read(call_id) or {"id": call_id}
    state.update(status=status, finished_at=time.time(), **data)
    pipe = redis_client().pipeline()
    pipe.set(call_key(call_id), json.dumps(state, default=str), ex=CALL_TTL_S)
    if status in ENDED and state.get("tenant"):
        pipe.zrem(slot_key(state["tenant"]), call_id)  # the tenant may send another call
    pipe.execute()

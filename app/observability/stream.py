"""GET /jobs/{id}/events: the job's Redis stream as Server-Sent Events, resumable, ending with the job.

Each event is `event: status|metric|eval|checkpoint|warning`, `id: <stream id>`, `data: <JSON>`.
A client that reconnects with `Last-Event-ID` gets exactly what it missed. The stream ends after a
terminal status event; when the record says the job ended but the stream never got that event
(Redis was flushed, a worker vanished), one status event without an id is made from the record.

What one stream may hold: a slot of its tenant's FT_MAX_EVENT_STREAMS (429 beyond, across replicas), a pooled
Redis connection of this process's FT_EVENT_STREAM_CONNECTIONS (503 beyond), and at most FT_STREAM_MAX_SECONDS,
after which it ends with a comment saying to reconnect with Last-Event-ID (EventSource does so by itself). Every
REAUTH_EVERY_S it checks its API key again: a revoked key's stream ends.
"""

import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from app.broker import events
from app.core.config import settings
from app.core.errors import DomainError, Invalid
from app.jobs import service as jobs_service
from app.jobs.schemas import JobPublic
from app.models import TERMINAL_STATUSES, Job
from app.tenants import slots
from app.tenants.auth import Caller, authenticate, bearer_scheme
from app.tenants.limits import LIMITED

router = APIRouter(prefix="/jobs", tags=["events"])
STREAM_ID = re.compile(r"^\d+(-\d+)?$")
BLOCK_MS = 5_000  # how long one read waits for new events before the record is checked again
GRACE_MS = 2_000  # a worker records the outcome in SQL just before it publishes it: wait that long for it
PING_S = 15  # a comment line this often keeps proxies from closing an idle stream
REAUTH_EVERY_S = 30  # how often an open stream checks that its key still may read the job
BUSY_RETRY_AFTER_S = 10
_open_here: set[str] = set()  # this process's open streams: one pooled Redis connection each at most


class StreamsBusy(DomainError):
    """This API process has as many streams open as it has Redis connections for them."""

    status_code = 503


@dataclass
class _Lease:
    """What an open stream holds: its tenant's slot and a place in this process's pool; given back once."""

    tenant: str
    stream_id: str
    released: bool = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            _open_here.discard(self.stream_id)
            await slots.release_slot(slots.stream_slot_key(self.tenant), self.stream_id)


async def _lease(tenant: str) -> _Lease:
    """503 when this process's stream connections are all in use; 429 at the tenant's FT_MAX_EVENT_STREAMS."""
    if len(_open_here) >= settings.event_stream_connections:
        raise StreamsBusy(
            f"this API replica has {len(_open_here)} event streams open, all it has Redis connections for "
            "(FT_EVENT_STREAM_CONNECTIONS); retry shortly, or poll with follow=false",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
        )
    stream_id = f"stream_{secrets.token_hex(8)}"
    await slots.take_stream_slot(tenant, stream_id)
    _open_here.add(stream_id)
    return _Lease(tenant, stream_id)


def _authorize(request: Request, job_id: str) -> Caller:
    """401 or 404 before the stream starts (and again while it runs); a short-lived session each time, as the
    stream may stay open for hours."""
    with request.app.state.sessionmaker() as session:
        caller = authenticate(session, request.headers.get("authorization"))
        jobs_service.get_job(session, caller, job_id)
        return caller


def _still_authorized(request: Request, job_id: str) -> bool:
    try:
        _authorize(request, job_id)
    except DomainError:  # the key was revoked, or the job deleted
        return False
    return True


def _job_status(request: Request, job_id: str) -> JobPublic | None:
    with request.app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        return JobPublic.of(job) if job is not None else None


def _terminal_from_record(job: JobPublic) -> ServerSentEvent:
    data = {"status": job.status, "from_record": True}
    if job.error:
        data["error"] = job.error.model_dump()
    return ServerSentEvent(data=json.dumps(data), event="status")


async def _stream(
    request: Request, job_id: str, after: str, follow: bool, lease: _Lease
) -> AsyncIterator[ServerSentEvent]:
    key = events.stream_key(job_id)
    client = events.stream_redis_client()  # shared: a stream borrows a connection per read
    ends_at = time.monotonic() + settings.stream_max_seconds
    recheck_at = time.monotonic() + REAUTH_EVERY_S
    try:
        block: int | None = None  # replay first, without waiting
        grace_until: float | None = None
        while True:
            now = time.monotonic()
            if now >= ends_at:
                yield ServerSentEvent(
                    comment=f"this stream ends after FT_STREAM_MAX_SECONDS={settings.stream_max_seconds:g}s; "
                    f"reconnect with Last-Event-ID: {after} to go on where it stopped"
                )
                return
            if now >= recheck_at:
                if not await run_in_threadpool(_still_authorized, request, job_id):
                    yield ServerSentEvent(comment="the API key was revoked or lost access to the job: stream ended")
                    return
                await slots.refresh_stream_slot(lease.tenant, lease.stream_id)
                recheck_at = now + REAUTH_EVERY_S
            wait_ms = block
            if wait_ms is not None:  # wake for the next check or the end of the stream's lifetime
                wait_ms = max(1, min(wait_ms, int((min(ends_at, recheck_at) - now) * 1000)))
            result = await client.xread({key: after}, count=500, block=wait_ms)
            entries = result[0][1] if result else []
            for event_id, fields in entries:
                after = event_id
                yield ServerSentEvent(data=fields["data"], event=fields["type"], id=event_id)
                if fields["type"] == "status" and json.loads(fields["data"]).get("status") in TERMINAL_STATUSES:
                    return
            if entries:
                continue
            if not follow:
                return
            job = await run_in_threadpool(_job_status, request, job_id)
            if job is None:
                return  # deleted while we watched
            if job.status in TERMINAL_STATUSES:
                if grace_until is not None and time.monotonic() >= grace_until:
                    yield _terminal_from_record(job)
                    return
                grace_until, block = grace_until or time.monotonic() + GRACE_MS / 1000, GRACE_MS
                continue
            block = BLOCK_MS
    finally:
        with anyio.CancelScope(shield=True):  # the client left: still give the slot back
            await lease.release()


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    dependencies=[Security(bearer_scheme)],  # the scheme in OpenAPI; the key is checked in _authorize
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "A stream of Server-Sent Events."},
        **LIMITED,
        503: {"description": "This replica has all the event streams open it can; `Retry-After` says when to retry."},
    },
)
async def job_events(
    job_id: str,
    request: Request,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event id.")
    ] = None,
    after: Annotated[
        str | None, Query(description="Resume after this event id (for clients that cannot set headers).")
    ] = None,
    follow: Annotated[bool, Query(description="false: send what happened so far, then end.")] = True,
) -> EventSourceResponse:
    """Status changes, metric points, eval results, checkpoints and warnings, as they happen."""
    caller = await run_in_threadpool(_authorize, request, job_id)
    start = last_event_id or after or "0"
    if not STREAM_ID.fullmatch(start):
        raise Invalid(f"Last-Event-ID: {start!r} is not an event id; send the `id:` of the last event you got")
    lease = await _lease(caller.tenant)
    # The background task frees the lease too when the stream never started (a HEAD, a client gone at once).
    stream = _stream(request, job_id, start, follow, lease)
    return EventSourceResponse(stream, ping=PING_S, background=BackgroundTask(lease.release))

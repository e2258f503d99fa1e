"""GET /jobs/{id}/events: the job's Redis stream as Server-Sent Events, resumable, ending with the job.

Each event is `event: status|metric|eval|checkpoint|warning`, `id: <stream id>`, `data: <JSON>`.
A client that reconnects with `Last-Event-ID` gets exactly what it missed. The stream ends after a
terminal status event; when the record says the job ended but the stream never got that event
(Redis was flushed, a worker vanished), one status event without an id is made from the record.

Live events come from the job's one reader in this process (app/observability/fanout.py), shared by all its
followers; what a follower missed before joining it (its `Last-Event-ID` onwards) is replayed from the stream.

What one stream may hold: a slot of its tenant's FT_MAX_EVENT_STREAMS (429 beyond, across replicas), a share of
its job's reader (a process reads at most FT_EVENT_STREAM_CONNECTIONS jobs at once, 503 for one more), and at
most FT_STREAM_MAX_SECONDS, after which it ends with a comment saying to reconnect with Last-Event-ID
(EventSource does so by itself). Every REAUTH_EVERY_S it checks its API key again: a revoked key's stream ends.
"""

import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
import redis
from fastapi import APIRouter, Header, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from app.broker import events
from app.core.config import settings
from app.core.errors import DomainError, Invalid
from app.jobs import service as jobs_service
from app.jobs.schemas import JobPublic
from app.models import TERMINAL_STATUSES
from app.observability.fanout import READ_COUNT, Entry, FanoutBusy, Follower, fanout, id_order
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


class StreamsBusy(DomainError):
    """This API process already reads as many jobs' streams as it has Redis connections for."""

    status_code = 503


@dataclass
class _Lease:
    """What an open stream holds: its tenant's slot and, while it follows, its place at the job's reader; given
    back once."""

    tenant: str
    stream_id: str
    follower: Follower | None = None
    released: bool = False

    async def release(self) -> None:
        if self.follower is not None:
            self.follower.leave()
        if not self.released:
            self.released = True
            await slots.release_slot(slots.stream_slot_key(self.tenant), self.stream_id)


def _busy(exc: FanoutBusy) -> StreamsBusy:
    return StreamsBusy(
        f"this API replica follows {exc.following} jobs' event streams, all it has Redis connections for "
        "(FT_EVENT_STREAM_CONNECTIONS); retry shortly, or poll with follow=false",
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )


async def _lease(tenant: str, job_id: str, follow: bool) -> _Lease:
    """429 at the tenant's FT_MAX_EVENT_STREAMS; 503 when following would need a reader this process cannot add."""
    lease = _Lease(tenant, f"stream_{secrets.token_hex(8)}")
    await slots.take_stream_slot(tenant, lease.stream_id)
    if follow:
        try:
            lease.follower = await fanout().follow(job_id, settings.event_stream_connections)
        except FanoutBusy as exc:
            await lease.release()
            raise _busy(exc) from None
        except (redis.RedisError, OSError):
            await lease.release()
            raise StreamsBusy(
                "the job's live events could not be read (Redis did not answer); retry shortly, or read the curve "
                "with GET /jobs/{id}/metrics",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
            ) from None
    return lease


def _authorize(request: Request, job_id: str) -> Caller:
    """401 or 404 before the stream starts (and again while it runs); a short-lived session each time, as the
    stream may stay open for hours."""
    with request.app.state.sessionmaker() as session:
        caller = authenticate(session, request.headers.get("authorization"))
        jobs_service.read_job(session, caller, job_id)
        return caller


def _still_authorized(request: Request, job_id: str) -> bool:
    try:
        _authorize(request, job_id)
    except DomainError:  # the key was revoked, or the job deleted
        return False
    return True


def _job_status(request: Request, job_id: str) -> JobPublic | None:
    with request.app.state.sessionmaker() as session:
        job = jobs_service.job_row(session, job_id)
        return JobPublic.of(job) if job is not None else None


def _terminal_from_record(job: JobPublic) -> ServerSentEvent:
    data = {"status": job.status, "from_record": True}
    if job.error:
        data["error"] = job.error.model_dump()
    return ServerSentEvent(data=json.dumps(data), event="status")


def _after(event_id: str) -> str:
    """The smallest stream id after `event_id` (XRANGE's start is inclusive): `5-2` -> `5-3`, `7` -> `7-1`."""
    ms, seq = id_order(event_id)
    return f"{ms}-{seq + 1}"


async def _replay(job_id: str, after: str, until: str = "+") -> AsyncIterator[Entry]:
    """The stream's events after `after` up to `until` (inclusive), a few hundred per short XRANGE."""
    client, key = events.async_redis_client(), events.stream_key(job_id)
    while until == "+" or id_order(after) < id_order(until):
        entries = await client.xrange(key, min=_after(after), max=until, count=READ_COUNT)
        for entry in entries:
            yield entry
        if len(entries) < READ_COUNT:
            return
        after = entries[-1][0]


def _sse(entry: Entry) -> tuple[ServerSentEvent, bool]:
    """The entry as an event, and whether it is the job's terminal status (the stream's last event)."""
    event_id, fields = entry
    terminal = fields["type"] == "status" and json.loads(fields["data"]).get("status") in TERMINAL_STATUSES
    return ServerSentEvent(data=fields["data"], event=fields["type"], id=event_id), terminal


async def _next_live(follower: Follower, wait_s: float) -> Entry | None:
    """The follower's next queued event, or None when `wait_s` passes first."""
    if wait_s <= 0:
        return None if follower.queue.empty() else follower.queue.get_nowait()
    with anyio.move_on_after(wait_s):
        return await follower.queue.get()
    return None


async def _stream(request: Request, job_id: str, after: str, lease: _Lease) -> AsyncIterator[ServerSentEvent]:
    ends_at = time.monotonic() + settings.stream_max_seconds
    recheck_at = time.monotonic() + REAUTH_EVERY_S
    try:
        follower = lease.follower
        if follower is None:  # follow=false: what happened so far, then the end
            async for entry in _replay(job_id, after):
                event, terminal = _sse(entry)
                yield event
                if terminal:
                    return
            return
        block_s: float = 0  # first check the record at once: the job may have ended long ago
        grace_until: float | None = None
        while True:
            async for entry in _replay(job_id, after, follower.joined_at):  # the gap before the live events
                after = entry[0]
                event, terminal = _sse(entry)
                yield event
                if terminal:
                    return
            while not (follower.detached and follower.queue.empty()):
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
                entry = await _next_live(follower, min(block_s, ends_at - now, recheck_at - now))
                if entry is not None:
                    if id_order(entry[0]) <= id_order(after):
                        continue  # the replay already sent it (the client resumed past the reader's cursor)
                    after = entry[0]
                    event, terminal = _sse(entry)
                    yield event
                    if terminal:
                        return
                    continue
                job = await run_in_threadpool(_job_status, request, job_id)
                if job is None:
                    return  # deleted while we watched
                if job.status in TERMINAL_STATUSES:
                    if grace_until is not None and time.monotonic() >= grace_until:
                        yield _terminal_from_record(job)
                        return
                    grace_until, block_s = grace_until or time.monotonic() + GRACE_MS / 1000, GRACE_MS / 1000
                    continue
                block_s = BLOCK_MS / 1000
            try:  # it fell behind and was detached: rejoin the reader and replay what it missed from the stream
                follower = lease.follower = await fanout().follow(job_id, settings.event_stream_connections)
            except FanoutBusy:
                yield ServerSentEvent(comment=f"this replica is busy: reconnect with Last-Event-ID: {after}")
                return
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
    lease = await _lease(caller.tenant, job_id, follow)
    # The background task frees the lease too when the stream never started (a HEAD, a client gone at once).
    stream = _stream(request, job_id, start, lease)
    return EventSourceResponse(stream, ping=PING_S, background=BackgroundTask(lease.release))

"""GET /jobs/{id}/events: the job's Redis stream as Server-Sent Events, resumable, ending with the job.

Each event is `event: status|metric|eval|checkpoint|warning`, `id: <stream id>`, `data: <JSON>`.
A client that reconnects with `Last-Event-ID` gets exactly what it missed. The stream ends after a
terminal status event; when the record says the job ended but the stream never got that event
(Redis was flushed, a worker vanished), one status event without an id is made from the record.
"""

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.broker import events
from app.core.config import settings
from app.core.errors import Invalid
from app.jobs import service as jobs_service
from app.jobs.schemas import JobPublic
from app.models import TERMINAL_STATUSES, Job
from app.tenants.auth import authenticate

router = APIRouter(prefix="/jobs", tags=["events"])
STREAM_ID = re.compile(r"^\d+(-\d+)?$")
BLOCK_MS = 5_000  # how long one read waits for new events before the record is checked again
GRACE_MS = 2_000  # a worker records the outcome in SQL just before it publishes it: wait that long for it
PING_S = 15  # a comment line this often keeps proxies from closing an idle stream


def _authorize(request: Request, job_id: str) -> None:
    """401 or 404 before the stream starts; a short-lived session, as the stream may stay open for hours."""
    with request.app.state.sessionmaker() as session:
        jobs_service.get_job(session, authenticate(session, request.headers.get("authorization")), job_id)


def _job_status(request: Request, job_id: str) -> JobPublic | None:
    with request.app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        return JobPublic.of(job) if job is not None else None


def _terminal_from_record(job: JobPublic) -> ServerSentEvent:
    data = {"status": job.status, "from_record": True}
    if job.error:
        data["error"] = job.error.model_dump()
    return ServerSentEvent(data=json.dumps(data), event="status")


async def _stream(request: Request, job_id: str, after: str, follow: bool) -> AsyncIterator[ServerSentEvent]:
    key = events.stream_key(job_id)
    # socket_timeout above BLOCK_MS: a blocking XREAD is a slow answer, not a dead connection.
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=BLOCK_MS / 1000 + 10)
    try:
        block: int | None = None  # replay first, without waiting
        grace_used = False
        while True:
            result = await client.xread({key: after}, count=500, block=block)
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
                if grace_used:
                    yield _terminal_from_record(job)
                    return
                grace_used, block = True, GRACE_MS
                continue
            block = BLOCK_MS
    finally:
        with anyio.CancelScope(shield=True):  # the client left: still give the connection back
            await client.aclose()


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "A stream of Server-Sent Events."}},
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
    await run_in_threadpool(_authorize, request, job_id)
    start = last_event_id or after or "0"
    if not STREAM_ID.fullmatch(start):
        raise Invalid(f"Last-Event-ID: {start!r} is not an event id; send the `id:` of the last event you got")
    return EventSourceResponse(_stream(request, job_id, start, follow), ping=PING_S)

"""X-Request-ID in and out, each request's log scope and access line, and the id carried on to the worker.

A client's `X-Request-ID` is kept when it is short and printable (a proxy's or a client's own correlation id),
else one is made (`req_<24 hex>`). It is echoed on every response, errors included, is on every log line written
while the request runs (app/core/log_context.py), and travels in the header of every task message the request
sends (app/broker/tasks.py REQUEST_ID_HEADER), so the worker's lines for a job carry the id of the POST that made it.
"""

import logging
import re
import secrets
import time
from typing import Any

from celery import signals
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.broker.tasks import REQUEST_ID_HEADER
from app.core import log_context
from app.core.config import settings
from app.observability import tracing

HEADER = "X-Request-ID"
_ACCEPTED = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII, no spaces: safe in a header and a log line
_JOB_ID = re.compile(r"job_[0-9a-f]{24}")
access_log = logging.getLogger("app.access")


def accepted_request_id(value: object) -> str | None:
    """`value` if it may be used as a request id (from a client or from a task message), else None."""
    return value if isinstance(value, str) and _ACCEPTED.fullmatch(value) else None


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def _header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("latin-1")
    return None


class RequestIds:
    """Outermost middleware: the request id, the request's log scope, and one access line when it ends.

    The id is also left in `scope["state"]` for what answers outside this middleware (the 500 handler) and for
    problem bodies. The access line names the route's job when the path has one (`/jobs/{job_id}/...`).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accepted_request_id(_header(scope)) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = log_context.open_scope(request_id=request_id)
        tracing.tag({"ft.request_id": request_id})  # on the request's server span, when tracing is on
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # answered 500 by Starlette, outside this middleware: logged here with the request's ids
            _log_access(scope, status, time.perf_counter() - started, failed=True)
            raise
        else:
            _log_access(scope, status, time.perf_counter() - started)
        finally:
            log_context.close_scope(token)


def _log_access(scope: Scope, status: int, seconds: float, failed: bool = False) -> None:
    level = logging.ERROR if failed else logging.INFO
    if not (failed or settings.access_log) or not access_log.isEnabledFor(level):  # no line, and no work for one
        return
    path_job = scope.get("path_params", {}).get("job_id")
    if isinstance(path_job, str) and _JOB_ID.fullmatch(path_job):
        log_context.bind(job_id=path_job)
    route = getattr(scope.get("route"), "path", None)
    access_log.log(
        level,
        "%s %s %s",
        scope["method"],
        scope["path"],
        status,
        exc_info=failed,
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        },
    )


def _carry_request_id(headers: dict[str, Any] | None = None, **_: object) -> None:
    request_id = log_context.current().get("request_id")
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


def carry_request_ids() -> None:
    """Put the current request id (the API's request, or the task a worker runs) in every task message sent."""
    signals.before_task_publish.connect(_carry_request_id, weak=False, dispatch_uid="ft-carry-request-id")

"""The API's outer defences: a body size limit, no compressed bodies, the key before the body, browser
security headers, and an honest OpenAPI schema.

The body limit acts before any route reads a byte: JSON and form bodies get FT_MAX_REQUEST_BODY_BYTES,
multipart uploads the largest FT_MAX_UPLOAD_BYTES any tenant has (each tenant's own limit is applied once
its key is known). A request with a body and no valid key is answered 401 before any of the body is read,
so no one without a key can make the API receive, parse or spool an upload. Every response says `nosniff`;
pages (the dashboard, the docs) may run only the scripts and styles the API itself serves, and may not be
framed. The schema declares the errors each operation can answer.
"""

from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import settings
from app.core.errors import OPENAI_STATUS, PROBLEM_MEDIA_TYPE, DomainError, error_response

MULTIPART_FRAMING_BYTES = 64 * 1024  # the form's boundaries, headers and a `name` field around the file
PUBLIC_PATHS = {"/healthz", "/readyz"}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, what: str):
        super().__init__(413, f"the request body is larger than the {limit:,}-byte limit for {what}")


def body_limit(content_type: str) -> tuple[int, str]:
    if content_type.startswith("multipart/form-data"):
        return settings.largest_upload_bytes() + MULTIPART_FRAMING_BYTES, "uploads (FT_MAX_UPLOAD_BYTES)"
    return settings.max_request_body_bytes, "request bodies (FT_MAX_REQUEST_BODY_BYTES)"


class RequestBodyLimit:
    """413 for a body over its limit (by Content-Length at once, else while it streams); 415 for a compressed one.

    Nothing here decompresses a request, so a `Content-Encoding` other than identity can only be a mistake
    or a decompression bomb aimed at something downstream: it is refused.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            detail = f"Content-Encoding {encoding!r} is not accepted: send the body uncompressed"
            await _reject(scope, receive, send, 415, detail)
            return
        limit, what = body_limit(headers.get("content-type", ""))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _reject(scope, receive, send, 413, BodyTooLarge(limit, what).detail)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body, or one longer than its Content-Length said
                    raise BodyTooLarge(limit, what)
            return message

        await self.app(scope, counted, send)


async def _reject(
    scope: Scope, receive: Receive, send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    await error_response(Request(scope), status, detail, headers)(scope, receive, send)


# --- the key before the body ---

# Checks an `Authorization` header against SQL, raising a DomainError (401) when it is no valid key. Given by
# app.main (app/tenants/auth.py's authenticate): this module sits below the tenants layer and cannot import it.
KeyCheck = Callable[[Session, str | None], object]


def _declares_body(headers: dict[str, str]) -> bool:
    return headers.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in headers


class KeyBeforeBody:
    """401 for a request that brings a body without a valid key, answered before any of the body is read.

    Routes check the key too (they need the caller), but only once FastAPI has read and parsed the body: a
    multipart upload is spooled to disk first. Checked here only for requests that declare a body, in a worker
    thread with the app's sessionmaker (the check is a SQL query); the health probes are left alone.
    """

    def __init__(self, app: ASGIApp, check_key: KeyCheck):
        self.app = app
        self.check_key = check_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not _declares_body(headers):
            await self.app(scope, receive, send)
            return
        make_session = scope["app"].state.sessionmaker
        try:
            await anyio.to_thread.run_sync(self._check, make_session, headers.get("authorization"))
        except DomainError as exc:
            await _reject(scope, receive, send, exc.status_code, exc.detail, exc.headers)
            return
        await self.app(scope, receive, send)

    def _check(self, make_session: Callable[[], Session], authorization: str | None) -> None:
        with make_session() as session:
            self.check_key(session, authorization)


# --- headers that tell browsers what a response may do ---

# Pages run only what the API serves: no inline script or style, nothing from another origin, no framing.
# `data:` images: the dashboard's empty favicon and Swagger UI's icons (in its stylesheet).
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'"  # JSON, files, streams: never a page


def page_policy() -> str:
    """The pages' CSP; with presigned downloads the dashboard's fetch follows a 307 to the bucket, so its origin
    may be fetched too."""
    if settings.storage_backend != "s3" or not settings.s3_presign_downloads:
        return PAGE_POLICY
    if settings.s3_endpoint_url:
        parts = urlsplit(settings.s3_endpoint_url)
        bucket_origin = f"{parts.scheme}://{parts.netloc}"
    else:
        bucket_origin = "https://*.amazonaws.com"
    return f"{PAGE_POLICY}; connect-src 'self' {bucket_origin}"


class SecurityHeaders:
    """`X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer` on every response; on HTML the
    pages' Content-Security-Policy and `X-Frame-Options: DENY` (for browsers without frame-ancestors)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.page_policy = page_policy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                page = headers.get("content-type", "").startswith("text/html")
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Content-Security-Policy", self.page_policy if page else OTHER_POLICY)
                if page:
                    headers.setdefault("X-Frame-Options", "DENY")
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- the OpenAPI schema: every operation's errors ---

ERROR_DESCRIPTIONS = {
    400: "Malformed request (under /v1: any invalid request, as OpenAI answers it).",
    401: "No API key, a malformed one, or a revoked one.",
    403: "Only an admin key may do this.",
    404: "No such thing, or not the caller's: the same answer either way.",
    409: "The thing is in the wrong state for this request.",
    413: "The request body or the upload is too large.",
    415: "An unsupported file type, or a compressed request body.",
    422: "Invalid input; `detail` names the field or row.",
    429: "A rate limit or quota; `limit`, `allowed` and `usage` say which, `Retry-After` when waiting helps.",
}
ERROR_SCHEMA: dict[str, Any] = {  # RFC 9457 problem details (app/core/errors.py PROBLEM_TYPES)
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of error (`about:blank`: see status)."},
        "title": {"type": "string", "description": "That kind of error in a few words."},
        "status": {"type": "integer", "description": "The HTTP status."},
        "instance": {"type": "string", "description": "The request's path."},
        "detail": {"type": "string", "description": "What went wrong, in words a user can act on."},
        "problems": {"type": "array", "items": {"type": "object"}, "description": "Each invalid field or row."},
        "limit": {"type": "string", "description": "The limit reached (429)."},
        "allowed": {"type": "number", "description": "That limit's value for the caller's tenant (429)."},
        "usage": {"type": "number", "description": "What the tenant uses of it now (429)."},
    },
    "additionalProperties": True,
}
OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer, from what it takes (rate-limited routes declare 429)."""
    if path in PUBLIC_PATHS:
        return set()
    params = {p["name"]: p["in"] for p in operation.get("parameters", [])}
    body = operation.get("requestBody")
    statuses = {401}
    if "path" in params.values() or "after" in params:
        statuses.add(404)  # an unknown id, or one that is another tenant's
    if params or body:
        statuses.add(422)
    if body:
        statuses |= {400, 413, 415}
    if (method == "post" and "path" in params.values() and not path.startswith("/admin")) or "/artifacts/" in path:
        statuses.add(409)  # an action on a thing in the wrong state, or an artifact not made yet
    if path.startswith("/admin") or "tenant" in params:
        statuses.add(403)
    return statuses


def _document_errors(schema: dict[str, Any]) -> None:
    for path, operations in schema.get("paths", {}).items():
        openai = path.startswith("/v1/")
        body = OPENAI_ERROR_SCHEMA if openai else ERROR_SCHEMA
        media_type = "application/json" if openai else PROBLEM_MEDIA_TYPE
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.pop("422", None)  # FastAPI's default shape; ours carries `detail` as a string
            declared = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
            for status in sorted(error_statuses(path, method, operation) | declared):
                shown = OPENAI_STATUS.get(status, status) if openai else status
                description = ERROR_DESCRIPTIONS.get(shown) or HTTPStatus(shown).phrase
                entry = responses.setdefault(str(shown), {"description": description})
                entry.setdefault("content", {media_type: {"schema": body}})


def install_openapi(app: FastAPI) -> None:
    """Replace app.openapi with one that documents errors on every operation.

    The bearer scheme comes from the auth dependency (app/tenants/auth.py's HTTPBearer), so exactly the
    operations that take a key declare it; operation ids and tags come from app/core/openapi.py via app.main.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            _document_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_security(app: FastAPI, check_key: KeyCheck) -> None:
    """The outer defences, outermost first: headers on every answer, body limits (from the headers alone),
    then the key before the body."""
    app.add_middleware(KeyBeforeBody, check_key=check_key)
    app.add_middleware(RequestBodyLimit)
    app.add_middleware(SecurityHeaders)
    install_openapi(app)

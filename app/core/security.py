"""The API's outer defences: a request-body size limit, no compressed bodies, and an honest OpenAPI schema.

The body limit acts before any route reads a byte: JSON and form bodies get FT_MAX_REQUEST_BODY_BYTES,
multipart uploads the largest FT_MAX_UPLOAD_BYTES any tenant has (each tenant's own limit is applied once
its key is known). The schema declares the errors each operation can answer and the bearer-key scheme.
"""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import settings
from app.core.errors import OPENAI_STATUS, is_openai_path, openai_error

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


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    request = Request(scope)
    response = openai_error(status, detail) if is_openai_path(request) else JSONResponse({"detail": detail}, status)
    await response(scope, receive, send)


# --- the OpenAPI schema: every operation's errors, and the bearer scheme ---

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
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {
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
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.pop("422", None)  # FastAPI's default shape; ours carries `detail` as a string
            declared = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
            for status in sorted(error_statuses(path, method, operation) | declared):
                shown = OPENAI_STATUS.get(status, status) if openai else status
                description = ERROR_DESCRIPTIONS.get(shown) or HTTPStatus(shown).phrase
                entry = responses.setdefault(str(shown), {"description": description})
                entry.setdefault("content", {"application/json": {"schema": body}})
            if path not in PUBLIC_PATHS:
                operation["security"] = [{"bearerAuth": []}]


def install_openapi(app: FastAPI) -> None:
    """Replace app.openapi with one that documents errors and auth on every operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "`ft_...` key from ftctl"}
            }
            _document_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_security(app: FastAPI) -> None:
    app.add_middleware(RequestBodyLimit)
    install_openapi(app)

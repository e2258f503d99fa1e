"""Domain errors carry their HTTP status and a message a user can act on; one handler renders them.

Outside /v1 every error is an RFC 9457 problem (`application/problem+json`): `type` (a stable URI per kind
of error, PROBLEM_TYPES), `title`, `status`, `detail` (what went wrong and how to fix it), `instance` (the
request's path), and the error's own fields (`problems`, `limit`, `allowed`, `usage`). Under /v1 errors keep
OpenAI's shape, which its SDK turns into typed exceptions.
"""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match


class DomainError(Exception):
    status_code = 400

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers


class Unauthorized(DomainError):
    status_code = 401


class Forbidden(DomainError):
    """A known caller asking for what only an admin key may do (never used to hide another tenant's things)."""

    status_code = 403


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class TooLarge(DomainError):
    status_code = 413


class UnsupportedMediaType(DomainError):
    status_code = 415


class Invalid(DomainError):
    status_code = 422


class TooManyRequests(DomainError):
    """A rate limit or a quota; `Retry-After` when waiting helps."""

    status_code = 429


FORMAT_TYPES = (
    "text",
    "template",
    "prompt_completion",
    "chat",
    "sharegpt",
    "alpaca",
    "classification",
    "preference",
    "unpaired_preference",
)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    # Drop pydantic's discriminator tag after `format` (`format.template.template` -> `format.template`).
    if len(parts) > 1 and parts[0] == "format" and parts[1] in FORMAT_TYPES:
        del parts[1]
    # And after an integration's index (`integrations.0.mlflow.mlflow.tracking_uri` -> `integrations.0.mlflow...`).
    if len(parts) > 3 and parts[0] == "integrations" and parts[2] == parts[3]:
        del parts[2]
    return ".".join(parts) or "body"


def validation_detail(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    """A one-line human summary plus a list of {field, message} for a set of pydantic errors."""
    problems = []
    for err in errors:
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field; remove it (see the job spec in the API docs)"
        problems.append({"field": _location(tuple(err["loc"])), "message": message})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return summary, problems


# Under /v1 errors take OpenAI's shape, which its SDK turns into typed exceptions (400 -> BadRequestError, ...).
# OpenAI answers every bad or ill-timed request with 400 (its SDK retries a 409 as a lock timeout).
OPENAI_STATUS = {409: 400, 415: 400, 422: 400}
OPENAI_CODES = {
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    409: "invalid_state",
    413: "file_too_large",
    415: "unsupported_file",
}


def is_openai_path(request: Request) -> bool:
    return request.url.path == "/v1" or request.url.path.startswith("/v1/")


def openai_error(
    status_code: int,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> JSONResponse:
    """`{"error": {"message", "type", "param", "code"}}` with OpenAI's status for our status code; `code` overrides
    the status's default (`model_not_found`, `context_length_exceeded`)."""
    status = OPENAI_STATUS.get(status_code, status_code)
    kind = "server_error" if status >= 500 else "rate_limit_error" if status == 429 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code or OPENAI_CODES.get(status_code)}}
    retry = {} if status in (408, 429) or status >= 500 else {"x-should-retry": "false"}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), **retry})


PROBLEM_BASE = "https://finetune-service.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
# One stable `type` per kind of error a client may branch on; any other status is `about:blank` (RFC 9457 4.2.1),
# titled with its HTTP phrase.
PROBLEM_TYPES = {
    400: ("bad-request", "Malformed request"),
    401: ("unauthorized", "Missing or invalid API key"),
    403: ("forbidden", "Not allowed for this key"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Wrong state for this request"),
    413: ("too-large", "Request too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-request", "Invalid request"),
    429: ("limit-reached", "Rate limit or quota reached"),
    502: ("worker-failed", "The worker failed"),
    503: ("unavailable", "Temporarily unavailable"),
    504: ("worker-timeout", "No worker answered in time"),
}


def problem_type(status: int) -> tuple[str, str]:
    """(`type`, `title`) of a problem with this status."""
    if status in PROBLEM_TYPES:
        slug, title = PROBLEM_TYPES[status]
        return PROBLEM_BASE + slug, title
    try:
        return "about:blank", HTTPStatus(status).phrase
    except ValueError:
        return "about:blank", "Error"


def problem_response(
    request: Request,
    status: int,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An RFC 9457 problem: the standard members first, then the error's own fields (which cannot replace them)."""
    kind, title = problem_type(status)
    core = {"type": kind, "title": title, "status": status, "detail": detail, "instance": request.url.path}
    request_id = request.scope.get("state", {}).get("request_id")  # app/observability/request_ids.py
    if request_id:
        core["request_id"] = request_id  # what to quote when asking about this error: the logs have it too
    body = {**core, **{k: v for k, v in (extra or {}).items() if k not in core}}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def error_response(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answered outside any route (middleware): OpenAI's shape under /v1, else a problem."""
    if is_openai_path(request):
        return openai_error(status, detail, headers=headers)
    return problem_response(request, status, detail, headers=headers)


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette's own `Allow` names only the first route's; FastAPI
    keeps included routers nested, iter_route_contexts flattens them)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.matches(request.scope)[0] == Match.PARTIAL:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        if is_openai_path(request):
            return openai_error(exc.status_code, exc.detail, exc.extra.get("param"), exc.headers, exc.extra.get("code"))
        return problem_response(request, exc.status_code, exc.detail, exc.extra, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        summary, problems = validation_detail(list(exc.errors()))
        if is_openai_path(request):
            param = problems[0]["field"].removeprefix("query.").removeprefix("path.") if problems else None
            return openai_error(422, summary, param)
        return problem_response(request, 422, summary, {"problems": problems})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the API"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            allowed = allowed_methods(request)
            headers = {**(headers or {}), "Allow": allowed}
            detail = f"{request.method} is not allowed on {request.url.path}; it takes {allowed}"
        if is_openai_path(request):
            return openai_error(exc.status_code, detail, headers=headers)
        return problem_response(request, exc.status_code, detail, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises the exception after this answer, so it is logged with its traceback. The answer
        # leaves outside every middleware: the request id header is added here.
        request_id = request.scope.get("state", {}).get("request_id")
        detail = "an internal error; it was logged: try again, and report it if it persists"
        return error_response(request, 500, detail, {"X-Request-ID": request_id} if request_id else None)

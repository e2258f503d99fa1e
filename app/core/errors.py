"""Domain errors carry their HTTP status and a message a user can act on; one handler renders them."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        if is_openai_path(request):
            return openai_error(exc.status_code, exc.detail, exc.extra.get("param"), exc.headers, exc.extra.get("code"))
        return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        summary, problems = validation_detail(list(exc.errors()))
        if is_openai_path(request):
            param = problems[0]["field"].removeprefix("query.").removeprefix("path.") if problems else None
            return openai_error(422, summary, param)
        return JSONResponse({"detail": summary, "problems": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the API"
        if is_openai_path(request):
            return openai_error(exc.status_code, detail, headers=getattr(exc, "headers", None))
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

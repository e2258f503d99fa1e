"""Typed errors: one exception per kind of refusal, read from RFC 9457 problem details or the older `{"detail"}`."""

import email.utils
import time
from typing import Any

import httpx


class FinetuneError(Exception):
    """The API refused a request, or could not be reached (`status` is None then).

    `detail` is the API's readable message (what was wrong and how to fix it); `problems` lists
    `{"field", "message"}` for a request that did not validate; `body` is the whole error document.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        problems: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.detail = detail
        self.status = status
        self.problems = problems or []
        self.body = body or {}
        self.headers = headers or httpx.Headers()

    @property
    def type(self) -> str | None:
        """The problem type URI (RFC 9457), when the API sent one."""
        return self.body.get("type")

    @property
    def title(self) -> str | None:
        return self.body.get("title")

    @property
    def instance(self) -> str | None:
        return self.body.get("instance")


class Unauthorized(FinetuneError):
    """401: no key, or one that is unknown or revoked (`ftctl keys create NAME` makes one)."""


class Forbidden(FinetuneError):
    """403: the key may not do this (an admin-only request)."""


class NotFound(FinetuneError):
    """404: no such thing for this tenant (another tenant's things look the same as missing ones)."""


class Conflict(FinetuneError):
    """409: not now, in the thing's present state (cancel a finished job, delete a dataset a job uses)."""


class TooLarge(FinetuneError):
    """413: a body or file over the API's size limit."""


class Invalid(FinetuneError):
    """422: the request did not validate; `problems` says which fields and why."""


class RateLimited(FinetuneError):
    """429: a rate limit or quota; `retry_after` is how many seconds to wait, when waiting helps."""

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.headers.get("Retry-After"))


class ServerError(FinetuneError):
    """5xx: the API failed or a service behind it (the broker, the database) is down; retrying later may help."""


class Unreachable(FinetuneError):
    """No answer at all: the URL is wrong, the API is down, or the network dropped the connection."""


class ChecksumMismatch(FinetuneError):
    """A download whose bytes do not hash to the `X-Content-SHA256` the API announced; the file was removed."""


BY_STATUS: dict[int, type[FinetuneError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: Invalid,
    429: RateLimited,
}


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: the header is either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _readable(detail: Any) -> str:
    """FastAPI's own errors (and proxies') can carry a list or object as `detail`; make it one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail)


def error_from_response(response: httpx.Response) -> FinetuneError:
    """The typed error for a 4xx/5xx response whose body has been read."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text.strip() or response.reason_phrase}
    if isinstance(body.get("error"), dict):  # the /v1 routes answer in OpenAI's shape
        body = {**body, "detail": body["error"].get("message", "")}
    detail = _readable(body.get("detail") or body.get("title") or response.reason_phrase)
    kind = BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else FinetuneError)
    problems = body.get("problems") if isinstance(body.get("problems"), list) else None
    return kind(detail, status=response.status_code, problems=problems, body=body, headers=response.headers)


def unreachable(base_url: str, exc: httpx.TransportError) -> Unreachable:
    return Unreachable(f"cannot reach the API at {base_url} ({type(exc).__name__}: {exc}); check FT_API_URL")

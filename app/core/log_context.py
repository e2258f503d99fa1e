"""What every log line of the current request or task carries: `request_id`, `tenant`, `job_id`, `attempt`.

The API's request middleware and the worker's task signals open a scope; code below them adds to it (`bind`)
as it learns more: the tenant once the key is checked, the job id once a job is made or claimed. The log formatter
(app/observability/logs.py) puts the scope's fields on each line.

It lives in app/core, under every domain, because those domains bind to it (app/tenants knows the tenant,
app/broker the job it sends). A scope is one mutable dict held in a context variable, not one variable per field:
FastAPI runs sync dependencies and routes in worker threads on a *copy* of the request's context, and a field
bound there must still be on the lines written after it (the request's access line among them). The copy shares
the dict.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

FIELDS = ("request_id", "job_id", "tenant", "attempt")  # on every line, null when not known

_scope: ContextVar[dict[str, Any] | None] = ContextVar("ft_log_scope", default=None)


def open_scope(**fields: Any) -> Token:
    """Start a request's or task's fields (None values left out); give the token to `close_scope` at its end."""
    return _scope.set({k: v for k, v in fields.items() if v is not None})


def close_scope(token: Token) -> None:
    _scope.reset(token)


@contextmanager
def scope(**fields: Any) -> Iterator[None]:
    """`open_scope` and `close_scope` around a block."""
    token = open_scope(**fields)
    try:
        yield
    finally:
        close_scope(token)


def bind(**fields: Any) -> None:
    """Add fields to the open scope. Outside any request or task (a periodic loop, the CLI) there is none and
    nothing is kept: a loop's lines must not inherit the last job it looked at."""
    current = _scope.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def current() -> dict[str, Any]:
    """The open scope's fields (empty outside one); the dict itself, for the formatter to read without copying."""
    return _scope.get() or {}

"""The API's and the workers' logs: one format for every logger, each line with the request's or task's ids.

structlog renders the lines; it sits behind the standard library's logging (a `ProcessorFormatter` on the root
handler), so the code here keeps `logging.getLogger(__name__)` and uvicorn, Celery, transformers and the rest come
out in the same format. FT_LOG_FORMAT picks JSON (one object per line, for log pipelines) or console (readable,
what `ftctl demo` writes); FT_LOG_LEVEL the lowest level, for every logger. Every JSON line has `request_id`,
`job_id`, `tenant` and `attempt` (null when not known, app/core/log_context.py), `service` (api or worker), and
with tracing on `trace_id` and `span_id`.
"""

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

from app.core import log_context
from app.core.config import settings
from app.observability import tracing

Format = Literal["json", "console"]
HANDLER_NAME = "ft-logs"
# Loggers that bring their own handlers: theirs are removed so that their lines reach the root handler, and ours.
ADOPTED = ("uvicorn", "uvicorn.error", "celery", "transformers")
# httpx logs every request at INFO with its full URL, and user-given URLs (webhooks) may carry tokens in the query.
QUIET = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "uvicorn.access": logging.WARNING}

EventDict = MutableMapping[str, Any]
LEADING = ("timestamp", "level", "logger", "message", "service", *log_context.FIELDS)


def _add_context(service: str) -> structlog.types.Processor:
    def add(_: Any, __: str, event: EventDict) -> EventDict:
        fields = log_context.current()
        for name in log_context.FIELDS:
            event.setdefault(name, fields.get(name))
        for name, value in fields.items():  # what else the scope carries (e.g. a call id)
            event.setdefault(name, value)
        event.setdefault("service", service)
        return event

    return add


def _add_trace_ids(_: Any, __: str, event: EventDict) -> EventDict:
    """The current span's ids, so a line leads to its trace (tracing on only: off, OpenTelemetry is not imported)."""
    if not tracing.enabled():
        return event
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def _drop_duplicates(_: Any, __: str, event: EventDict) -> EventDict:
    """uvicorn passes each message a second time, with terminal colours, as `color_message`."""
    event.pop("color_message", None)
    return event


def _lead_with_the_essentials(_: Any, __: str, event: EventDict) -> EventDict:
    """timestamp, level, logger, message, then the ids, then the rest: the order a person scans a line in."""
    return {**{k: event[k] for k in LEADING if k in event}, **event}


def _drop_empty(_: Any, __: str, event: EventDict) -> EventDict:
    """Console lines show only the ids that are known (and not `service`: one file per process); JSON lines keep
    every field for a stable shape."""
    return {k: v for k, v in event.items() if v is not None and k != "service"}


def _renderers(fmt: Format, colors: bool) -> list[structlog.types.Processor]:
    if fmt == "json":
        return [
            structlog.processors.format_exc_info,  # the traceback as one string field, `exception`
            structlog.processors.EventRenamer("message"),
            _lead_with_the_essentials,
            structlog.processors.JSONRenderer(),
        ]
    return [_drop_empty, structlog.dev.ConsoleRenderer(colors=colors)]


def configure_logging(
    service: str,
    fmt: Format | None = None,
    level: str | int | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send every logger's lines, in one format, to `stream` (default: the process's real stderr).

    Safe to call again (each API app made, each Celery child): the handler is replaced, not added twice. The real
    stderr (`sys.__stderr__`) because Celery swaps `sys.stderr` for a proxy that logs what is written to it.
    """
    fmt = fmt or settings.log_format
    level = level or settings.log_level
    target = stream or sys.__stderr__ or sys.stderr
    shared: list[structlog.types.Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),  # `log.info(..., extra={"job_id": ...})` where no scope has it
        _drop_duplicates,
        _add_context(service),
        _add_trace_ids,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderers(fmt, colors=fmt == "console" and target.isatty()),
        ],
    )
    handler = logging.StreamHandler(target)
    handler.set_name(HANDLER_NAME)  # found by it when logging is configured again
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    adopt(*ADOPTED)
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
    # Code that prefers structlog's own loggers gets the same lines through the same handler.
    native = [p for p in shared if not isinstance(p, structlog.stdlib.ExtraAdder)]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *native,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=logging.getLogger,  # not structlog's LoggerFactory: it swaps every stdlib logger's class
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def adopt(*names: str) -> None:
    """Let these loggers' lines through the root handler: their own handlers go, propagation comes back.

    transformers, uvicorn and Celery each install a handler of their own that would print the line again in their
    format (uvicorn when it starts, transformers when it is imported): call again once they are loaded.
    """
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True

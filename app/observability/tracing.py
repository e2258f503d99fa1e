"""OpenTelemetry traces, off unless the standard OTEL_* variables ask for them; one trace from POST /jobs to training.

On when OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`) or OTEL_EXPORTER_OTLP_ENDPOINT /
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, unless OTEL_SDK_DISABLED=true. Off, this module imports nothing of the
SDK or of the instrumentations, and each helper is a check of one global. On: FastAPI traces each request itself
(`FastAPI(telemetry=...)`, fastapi_telemetry below); SQLAlchemy, Redis, httpx and Celery are instrumented. Celery's
instrumentation puts the trace context (`traceparent`) in each task message's headers and the worker continues the
trace from it, so the worker's `run/finetune.train` span, and the `training` span in it, join the trace of the
request that queued the job (docs/observability.md).

A root span that is only a library's call (a SQL query, a Redis command, an HTTP request: kind CLIENT, from a
background loop, a reporter thread or the Celery consumer's polling) is not recorded unless OTEL_TRACES_SAMPLER says
otherwise: a trace starts at a request, a task or a message sent.
"""

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)
_provider: "TracerProvider | None" = None
_tracer: "Tracer | None" = None
_instrumentors: list[Any] = []
PROBES = {"/healthz", "/readyz"}  # asked every few seconds: not worth a trace each


def requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces (the SDK's own rules: an exporter named, or an OTLP endpoint)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def enabled() -> bool:
    return _tracer is not None


def configure(service: str, exporter: "SpanExporter | None" = None) -> bool:
    """Start tracing in this process, once (the API at its first app, each Celery worker process at its start).

    `service`: the default `service.name` (OTEL_SERVICE_NAME wins). `exporter`: export there instead of what
    OTEL_* names, synchronously (the tests' in-memory exporter). Returns whether tracing is on.
    """
    global _provider, _tracer
    if _provider is not None:
        return True
    if exporter is None and not requested():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service})
    provider = TracerProvider(resource=resource, sampler=_sampler())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for named in _configured_exporters():
        provider.add_span_processor(BatchSpanProcessor(named))  # OTEL_BSP_* tune it
    # Not the global provider: every instrumentation is given this one, so shutdown() really ends tracing.
    _provider, _tracer = provider, provider.get_tracer("finetune-service")
    _instrument_libraries(provider)
    log.info("tracing on: service %s, exporting to %s", resource.attributes.get(SERVICE_NAME), _describe(exporter))
    return True


def shutdown() -> None:
    """Flush what is buffered and take the instrumentation out again (tests; a process's exit flushes by itself)."""
    global _provider, _tracer
    for instrumentor in reversed(_instrumentors):
        instrumentor.uninstrument()
    _instrumentors.clear()
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def fastapi_telemetry() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry (`FastAPI(telemetry=...)`): the server span of each request, and spans for its
    dependencies, endpoint and serialization, parents of the SQL, Redis, httpx and task-sending spans.

    Given our provider, not the global one, so that it is on exactly when tracing here is. Its metrics and log
    records stay off: Prometheus has the metrics (GET /metrics), and the log lines are ours.
    """
    if _provider is None:
        return {"tracing": False, "metrics": False, "logs": False}
    return {"tracer_provider": _provider, "metrics": False, "logs": False, "exclude": _is_probe}


def _is_probe(scope: Any) -> bool:
    return scope.get("path") in PROBES


def span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A child span of the current one around a block; nothing at all when tracing is off."""
    if _tracer is None:
        return nullcontext()
    return _tracer.start_as_current_span(
        name, attributes={k: v for k, v in (attributes or {}).items() if v is not None}
    )


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> "Span | None":
    """A child span of the current one that the caller ends (`end_span`), for a phase that no block encloses."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, attributes=_known(attributes))


def end_span(started: "Span | None") -> None:
    if started is not None:
        started.end()


def tag(attributes: Mapping[str, Any]) -> None:
    """Set attributes on the current span (the request id on the request's span); nothing when tracing is off."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_known(attributes))


@contextmanager
def untraced() -> Iterator[None]:
    """No library spans inside (a Redis check at every training step would add thousands to one trace)."""
    if _tracer is None:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def _known(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if v is not None}


def _instrument_libraries(provider: "TracerProvider") -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    from app.core.db import engine

    for instrumentor, options in [
        # The process's engine (engines made later are patched too). Its declared range stops below SQLAlchemy 2.1,
        # which it serves as well (cursor events, unchanged): tests/observability/test_tracing.py checks the spans.
        (SQLAlchemyInstrumentor(), {"engine": engine, "skip_dep_check": True}),
        (RedisInstrumentor(), {}),
        (HTTPXClientInstrumentor(), {}),
        (CeleryInstrumentor(), {}),  # sending: traceparent into the message headers; running: the trace continued
    ]:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider, **options)
            _instrumentors.append(instrumentor)


def _sampler() -> Any:
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None  # the SDK reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG itself
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind

    class NoLibraryRoots(Sampler):
        """A root span is recorded unless it is a library's client call; children follow their parent."""

        def should_sample(
            self, parent_context: Any, trace_id: int, name: str, kind: Any = None, *args: Any, **kwargs: Any
        ) -> SamplingResult:
            if kind == SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, *args, **kwargs)

        def get_description(self) -> str:
            return "NoLibraryRoots"

    return ParentBased(root=NoLibraryRoots())


def _configured_exporters() -> list["SpanExporter"]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names and requested():
        names = "otlp"  # an OTLP endpoint was given without naming the exporter
    exporters: list[SpanExporter] = []
    for name in [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]:
        if name == "otlp":
            exporters.append(_otlp_exporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER: %r is not an exporter this service has (otlp, console): ignored", name)
    return exporters


def _otlp_exporter() -> "SpanExporter":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is installed; exporting with it (the collector's "
            "OTLP/HTTP port, 4318 by default)",
            protocol,
        )
    return OTLPSpanExporter()  # endpoint, headers, timeout from OTEL_EXPORTER_OTLP_(TRACES_)*


def _describe(exporter: "SpanExporter | None") -> str:
    names = [type(e).__name__ for e in ([exporter] if exporter else [])]
    configured = os.environ.get("OTEL_TRACES_EXPORTER") or ("otlp" if requested() else "")
    return ", ".join(names + ([configured] if configured else [])) or "nowhere"

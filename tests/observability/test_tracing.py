"""One trace from POST /jobs into the worker's training span, with the SDK's in-memory exporter.

The API (TestClient) and a real Celery worker (celery.contrib.testing, solo pool, in a thread) run in this process so
that they share the exporter; between them is the real path: the API sends the task to the real Redis broker, its
`traceparent` in the message headers, and the worker consumes it from there and trains the tiny model for two steps.
Nothing but that header links the two: the worker's thread has no trace context of its own.
"""

import io
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from alembic.config import Config
from celery import signals
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.models import Job
from app.observability import logs, tracing
from app.tenants.auth import create_key
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    assert not tracing.enabled(), "no OTEL_* variable is set for the tests: tracing starts off"
    assert tracing.configure("finetune-tests", exporter=spans)
    yield spans
    tracing.shutdown()  # the rest of the session runs untraced again


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"tracing-{secrets.token_hex(4)}"
    monkeypatch.setattr(settings, "training_queue", name)
    yield name
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{name}*"):
        client.delete(key)


def queued_message(queue: str) -> dict[str, Any]:
    """The one task message waiting in `queue`, raw from Redis (kombu keeps a list per priority: `<queue>:9`...)."""
    client = redis.Redis.from_url(settings.redis_url)
    [raw] = [m for key in client.scan_iter(match=f"{queue}*") for m in client.lrange(key, 0, -1)]
    return json.loads(raw)


def wait_until_ended(job_id: str, timeout: float = 180) -> Job:
    crashed: list[BaseException] = []

    def note(exception: BaseException, **_: object) -> None:  # a task that raised leaves its job running
        crashed.append(exception)

    signals.task_failure.connect(note, weak=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not crashed:
            with SessionLocal() as session:
                job = session.get(Job, job_id)
                if job.status in ("succeeded", "failed", "cancelled"):
                    return job
            time.sleep(0.2)
    finally:
        signals.task_failure.disconnect(note)
    raise AssertionError(f"job {job_id} did not end within {timeout}s: {crashed or 'no task failed'}")


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


@pytest.mark.training  # trains the tiny model for two steps
def test_one_trace_runs_from_post_jobs_into_training(
    exporter: InMemorySpanExporter, queue: str, tiny_model: Path
) -> None:
    from worker.celery_app import app as worker_app

    tenant = f"tracing-{secrets.token_hex(4)}"
    with SessionLocal() as session:
        key = create_key(session, "tracing", tenant=tenant)
        session.commit()
    client = TestClient(create_app(), headers={"Authorization": f"Bearer {key}"})
    rows = "".join(json.dumps({"text": f"the quick brown fox {i}"}) + "\n" for i in range(8)).encode()
    dataset = client.post("/datasets", files={"file": ("fox.jsonl", rows)}).json()["id"]
    spec = {
        "base_model": TINY_MODEL,
        "dataset": dataset,
        "format": {"type": "text", "field": "text"},
        "quantization": None,
        "training": {"max_steps": 2, "batch_size": 2, "max_seq_length": 32, "optimizer": "adamw_torch"},
    }
    response = client.post("/jobs", json=spec, headers={"X-Request-ID": "trace-me"})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    message = queued_message(queue)
    assert message["headers"]["traceparent"].startswith("00-"), "the trace context travels in the message"

    buffer = io.StringIO()
    with start_worker(worker_app, pool="solo", perform_ping_check=False, queues=[queue], shutdown_timeout=60):
        logs.configure_logging("worker", fmt="json", level="INFO", stream=buffer)  # the worker set up its own
        job = wait_until_ended(job_id)
    logs.configure_logging("api")
    assert job.status == "succeeded", job.error_message

    spans = list(exporter.get_finished_spans())
    post = next(s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /jobs")
    assert post.attributes["ft.request_id"] == "trace-me"
    sent = one(spans, f"apply_async/{'finetune.train'}")
    run = one(spans, "run/finetune.train")
    training, load, train, save = (one(spans, n) for n in ("training", "load", "train", "save"))
    trace = post.context.trace_id
    assert {s.context.trace_id for s in (sent, run, training, load, train, save)} == {trace}, "one trace"
    assert sent.kind == SpanKind.PRODUCER and run.kind == SpanKind.CONSUMER
    assert run.parent.span_id == sent.context.span_id, "the worker continued the trace from the message"
    assert training.parent.span_id == run.context.span_id and save.parent.span_id == run.context.span_id
    assert load.parent.span_id == training.context.span_id and train.parent.span_id == training.context.span_id
    assert load.end_time <= train.start_time and train.end_time <= training.end_time
    assert training.attributes["ft.job_id"] == job_id and training.attributes["ft.attempt"] == 1
    assert train.attributes["ft.trainable_parameters"] > 0

    in_trace = [s for s in spans if s.context.trace_id == trace]
    claims = [s for s in in_trace if s.parent and s.parent.span_id == run.context.span_id and "UPDATE" in s.name]
    assert claims, "the worker's SQL (the claim) is in the trace, under the task's span"
    during_steps = [s for s in in_trace if s.start_time >= train.start_time and s.end_time <= train.end_time]
    assert not [s for s in during_steps if s.attributes.get("db.system") == "redis"], "no Redis span per step"
    assert not [s for s in spans if s.kind == SpanKind.CLIENT and s.parent is None], "no library call as a root"

    worker_lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    progress = [r for r in worker_lines if r["logger"] == "worker.progress"]
    assert progress and progress[-1]["message"].startswith("step 2/2 loss"), [r["message"] for r in worker_lines]
    for line in progress:
        assert (line["job_id"], line["tenant"], line["attempt"], line["request_id"]) == (job_id, tenant, 1, "trace-me")
        assert line["trace_id"] == format(trace, "032x"), "with tracing on, a line leads to its trace"


def test_off_the_api_loads_no_tracing_sdk_nor_instrumentation() -> None:
    """FastAPI and redis import the OpenTelemetry API (and redis the metrics SDK) by themselves; what tracing adds,
    the trace SDK, exporters and instrumentations, is not loaded, and FastAPI's own telemetry stays off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    probe = (
        "import sys; from app.main import create_app; app = create_app(); "
        "print(app._native_telemetry.enabled(), sorted(m for m in sys.modules if m.startswith(("
        "'opentelemetry.sdk.trace', 'opentelemetry.instrumentation', 'opentelemetry.exporter'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False []", out.stdout


def test_off_the_helpers_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing.requested()
    assert not tracing.configure("finetune-tests") and not tracing.enabled()
    with tracing.span("nothing") as nothing, tracing.untraced():
        assert nothing is None
    assert tracing.start_span("nothing") is None


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_otel_variables_decide(env: dict[str, Any], on: bool) -> None:
    assert tracing.requested(env) is on

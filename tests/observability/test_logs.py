"""The API's logs and request ids, in-process (migrated SQLite, the real Redis broker): JSON lines with request_id,
tenant, job_id and attempt; X-Request-ID in and out, errors included; the id in the task message's headers."""

import io
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app.broker.tasks import REQUEST_ID_HEADER
from app.core import log_context
from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.observability import logs
from app.tenants.auth import create_key
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]
MADE_ID = re.compile(r"req_[0-9a-f]{24}")
Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"logs-{secrets.token_hex(4)}"


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Training tasks go to the real broker, on a queue of this test's own that no worker reads; deleted after."""
    name = f"logs-{secrets.token_hex(4)}"
    monkeypatch.setattr(settings, "training_queue", name)
    yield name
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{name}*"):
        client.delete(key)


@pytest.fixture
def app_and_lines() -> Iterator[tuple[Any, Lines]]:
    """A fresh app whose log lines (every logger's, as the process writes them) land in a buffer, parsed."""
    app = create_app()
    buffer = io.StringIO()
    logs.configure_logging("api", fmt="json", level="INFO", stream=buffer)  # after create_app, which set stderr
    yield app, lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    logs.configure_logging("api")


@pytest.fixture
def client(app_and_lines: tuple[Any, Lines], tenant: str) -> Iterator[TestClient]:
    with SessionLocal() as session:
        key = create_key(session, "logs", tenant=tenant)
        session.commit()
    with TestClient(app_and_lines[0], headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def lines(app_and_lines: tuple[Any, Lines]) -> Lines:
    return app_and_lines[1]


def queued_message(queue: str) -> dict[str, Any]:
    """The one task message waiting in `queue`, raw from Redis (kombu keeps a list per priority: `<queue>:9`...)."""
    client = redis.Redis.from_url(settings.redis_url)
    [raw] = [m for key in client.scan_iter(match=f"{queue}*") for m in client.lrange(key, 0, -1)]
    return json.loads(raw)


def submit(client: TestClient, request_id: str) -> dict[str, Any]:
    rows = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(4)).encode()
    dataset = client.post("/datasets", files={"file": ("logs.jsonl", rows)}).json()["id"]
    spec = {"base_model": TINY_MODEL, "dataset": dataset, "format": {"type": "text", "field": "text"}}
    response = client.post("/jobs", json=spec, headers={"X-Request-ID": request_id})
    assert response.status_code == 201, response.text
    assert response.headers["x-request-id"] == request_id
    return response.json()


def test_a_jobs_lines_carry_the_request_id_the_tenant_and_the_job(
    client: TestClient, lines: Lines, tenant: str, queue: str, tiny_model: Path
) -> None:
    job = submit(client, "client-chosen-id:1")
    assert client.get(f"/jobs/{job['id']}", headers={"X-Request-ID": "client-chosen-id:2"}).status_code == 200

    records = lines()
    for record in records:  # one shape for every line, whoever wrote it
        assert {"timestamp", "level", "logger", "message", "service", *log_context.FIELDS} <= set(record), record
        assert record["service"] == "api"
    posted = [r for r in records if r["request_id"] == "client-chosen-id:1"]
    sent = next(r for r in posted if r["logger"] == "app.broker.queue")
    assert sent["message"] == f"job {job['id']} sent to queue {queue}"
    assert (sent["level"], sent["job_id"], sent["tenant"], sent["attempt"]) == ("info", job["id"], tenant, None)
    access = [r for r in posted if r["logger"] == "app.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [("POST", "/jobs", 201)]
    assert access[0]["job_id"] == job["id"] and access[0]["tenant"] == tenant and access[0]["duration_ms"] > 0
    got = [r for r in records if r["request_id"] == "client-chosen-id:2" and r["logger"] == "app.access"]
    assert [(g["route"], g["status"], g["job_id"], g["tenant"]) for g in got] == [
        ("/jobs/{job_id}", 200, job["id"], tenant)
    ]

    message = queued_message(queue)
    assert message["headers"][REQUEST_ID_HEADER] == "client-chosen-id:1", "the worker hears the POST's request id"


@pytest.mark.parametrize(
    "given", [b"", b"x" * 129, b"two words", "\u00fcn\u00efcode".encode(), b'quote"s\x7f'], ids=repr
)
def test_an_unfit_request_id_is_replaced_by_one_of_ours(client: TestClient, lines: Lines, given: bytes) -> None:
    response = client.get("/jobs", headers={"X-Request-ID": given})
    made = response.headers["x-request-id"]
    assert response.status_code == 200 and MADE_ID.fullmatch(made), made
    assert [r["request_id"] for r in lines() if r["logger"] == "app.access"] == [made]


def test_without_one_each_request_gets_its_own_id(client: TestClient) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(MADE_ID.fullmatch(i) for i in ids)


def test_errors_carry_the_request_id_in_the_header_and_the_problem(
    app_and_lines: tuple[Any, Lines], client: TestClient, lines: Lines
) -> None:
    def boom() -> None:
        raise RuntimeError("a bug in a route")

    app_and_lines[0].add_api_route("/boom", boom)
    headers = {"X-Request-ID": "err-1"}
    missing = client.get(f"/jobs/job_{'0' * 24}", headers=headers)
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "err-1"
    assert missing.json()["request_id"] == "err-1", "quoted in the problem body too"
    with TestClient(app_and_lines[0], raise_server_exceptions=False) as anonymous:  # answered by the dependency
        unauthorized = anonymous.get("/jobs", headers=headers)
        assert unauthorized.status_code == 401 and unauthorized.headers["x-request-id"] == "err-1"
        too_large = anonymous.post("/jobs", content=b"x" * (settings.max_request_body_bytes + 1), headers=headers)
        assert too_large.status_code == 413 and too_large.headers["x-request-id"] == "err-1", "answered by middleware"
    crashed = client.get("/boom", headers=headers)
    assert crashed.status_code == 500 and crashed.headers["x-request-id"] == "err-1"
    assert crashed.json()["request_id"] == "err-1"

    access = [r for r in lines() if r["logger"] == "app.access"]
    assert [(a["path"], a["status"], a["level"]) for a in access] == [
        (f"/jobs/job_{'0' * 24}", 404, "info"),
        ("/jobs", 401, "info"),
        ("/jobs", 413, "info"),
        ("/boom", 500, "error"),
    ]
    assert "RuntimeError: a bug in a route" in access[-1]["exception"], "the traceback, on the request's own line"
    assert all(a["request_id"] == "err-1" for a in access)


def test_without_access_lines_only_failed_requests_are_logged(
    app_and_lines: tuple[Any, Lines], client: TestClient, lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> None:
        raise RuntimeError("a bug")

    app_and_lines[0].add_api_route("/boom", boom)
    monkeypatch.setattr(settings, "access_log", False)  # FT_ACCESS_LOG=false
    assert client.get("/jobs").status_code == 200 and client.get("/boom").status_code == 500
    assert [(r["path"], r["status"]) for r in lines() if r["logger"] == "app.access"] == [("/boom", 500)]


def test_console_lines_are_readable_and_name_only_the_known_ids(client: TestClient) -> None:
    buffer = io.StringIO()
    logs.configure_logging("api", fmt="console", level="INFO", stream=buffer)
    client.get("/jobs", headers={"X-Request-ID": "console-1"})
    [line] = [ln for ln in buffer.getvalue().splitlines() if "GET /jobs 200" in ln]
    assert not line.startswith("{") and "request_id=console-1" in line and "[info" in line
    assert "job_id" not in line and "attempt" not in line, "unknown ids are left out of console lines"


def test_lines_outside_a_request_have_the_fields_null_and_bind_keeps_nothing(lines: Lines) -> None:
    log_context.bind(job_id="job_" + "1" * 24)  # a loop's bind, outside any scope: forgotten at once
    logging.getLogger("app.jobs.reconciler").warning("a loop's line")
    with log_context.scope(request_id="outer"):
        log_context.bind(tenant="t1")
        logging.getLogger("worker.job_runner").info("inside", extra={"step": 3})
    [outside, inside] = [r for r in lines() if r["message"] in ("a loop's line", "inside")]
    assert [outside[f] for f in log_context.FIELDS] == [None, None, None, None]
    assert (inside["request_id"], inside["tenant"], inside["job_id"], inside["step"]) == ("outer", "t1", None, 3)
    assert log_context.current() == {}, "the scope ended with its block"


def test_uvicorn_and_library_loggers_come_out_in_the_same_format(lines: Lines) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(logging.StreamHandler(io.StringIO()))  # what uvicorn's own logging config installs
    uvicorn_error.propagate = False
    logs.adopt("uvicorn.error")
    uvicorn_error.setLevel(logging.INFO)
    uvicorn_error.info("Started server process [%d]", 42, extra={"color_message": "Started server process [\x1b[36m%d"})
    logging.getLogger("httpx").info("HTTP Request: POST https://hooks.example/?token=secret")
    records = lines()
    [started] = [r for r in records if r["logger"] == "uvicorn.error"]
    assert started["message"] == "Started server process [42]" and "color_message" not in started
    assert not [r for r in records if r["logger"] == "httpx"], "httpx's request lines (full URLs) stay below INFO"

"""What request ids and the JSON access line cost an API request, with tracing off (docs/observability.md).

`python -m bench.log_overhead` prints, best of 7 runs each:
- `ids_us`: RequestIds (request id, log scope, no access line) around a no-op ASGI app, minus the bare app;
- `access_line_us`: one JSON `app.access` line, and `uvicorn_line_us`: uvicorn's default access line (which it
  replaces), both written to /dev/null in this process;
- `get_job_us` / `get_job_without_ids_us`: CPU time of one `GET /jobs/{id}` through the real app in-process
  (migrated SQLite in a temporary FT_DATA_DIR, the Redis at FT_REDIS_URL), with and without RequestIds.
"""

import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JOB_PATH = "/jobs/job_" + "a" * 24


def _best(run: Any, n: int, repeats: int = 7) -> float:
    """Microseconds per call, the best of `repeats` runs of n calls."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(n)
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


async def _noop(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def middleware_and_lines() -> dict[str, float]:
    from uvicorn.logging import AccessFormatter

    from app.observability import logs
    from app.observability.request_ids import RequestIds

    devnull = open(os.devnull, "w")  # noqa: SIM115 - for the whole run
    logs.configure_logging("api", fmt="json", level="WARNING", stream=devnull)  # the middleware alone: no line
    scope = {"type": "http", "method": "GET", "path": JOB_PATH, "headers": [(b"x-request-id", b"bench")]}

    async def receive() -> dict[str, str]:
        return {"type": "http.request"}

    async def send(_: Any) -> None:
        pass

    def calls(app: Any) -> Any:
        async def many(n: int) -> None:
            for _ in range(n):
                await app(dict(scope), receive, send)

        return lambda n: asyncio.run(many(n))

    bare, wrapped = _best(calls(_noop), 20_000), _best(calls(RequestIds(_noop)), 20_000)
    logs.configure_logging("api", fmt="json", level="INFO", stream=devnull)
    ours = logging.getLogger("app.access")
    extra = {"method": "GET", "path": JOB_PATH, "route": "/jobs/{job_id}", "status": 200, "duration_ms": 1.0}
    uvicorn = logging.getLogger("bench.uvicorn.access")
    uvicorn.propagate = False
    handler = logging.StreamHandler(devnull)
    handler.setFormatter(AccessFormatter('%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'))
    uvicorn.addHandler(handler)

    def our_lines(n: int) -> None:
        for _ in range(n):
            ours.info("%s %s %s", "GET", JOB_PATH, 200, extra=extra)

    def uvicorn_lines(n: int) -> None:
        for _ in range(n):
            uvicorn.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", JOB_PATH, "1.1", 200)

    return {
        "ids_us": round(wrapped - bare, 1),
        "access_line_us": round(_best(our_lines, 5000), 1),
        "uvicorn_line_us": round(_best(uvicorn_lines, 5000), 1),
    }


_GET_JOB = """
import asyncio, os, sys, time
from app.core.db import SessionLocal
from app.main import create_app
from app.models import Job
from app.observability.request_ids import RequestIds
from app.tenants.auth import create_key
with SessionLocal() as session:
    key = create_key(session, "bench", tenant="bench")
    job = Job(tenant="bench", status="running", spec={"base_model": "m", "dataset": "d"}, step=5, total_steps=10)
    session.add(job)
    session.commit()
app = create_app()
if sys.argv[1] == "without":
    app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestIds]
headers = [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())]
scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
         "path": f"/jobs/{job.id}", "raw_path": b"", "query_string": b"", "root_path": "", "headers": headers,
         "client": ("127.0.0.1", 1), "server": ("bench", 80)}
async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}
async def send(message):
    assert message["type"] != "http.response.start" or message["status"] == 200, message
async def main(n):
    for _ in range(n):
        await app(dict(scope), receive, send)
asyncio.run(main(300))
started = time.process_time()
asyncio.run(main(1500))
print(1e6 * (time.process_time() - started) / 1500)
"""


def get_job_cpu(rounds: int = 6) -> dict[str, float]:
    """CPU µs per GET /jobs/{id}, median of `rounds` interleaved runs with and without RequestIds."""
    with tempfile.TemporaryDirectory(prefix="ft-bench-logs-") as data:
        env = {**os.environ, "FT_DATA_DIR": data, "FT_LOG_LEVEL": "INFO", "FT_RECONCILE_EVERY_SECONDS": "0"}
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"], env=env, cwd=ROOT, check=True, capture_output=True
        )
        runs: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(rounds):
            for variant in runs:
                out = subprocess.run(
                    [sys.executable, "-c", _GET_JOB, variant],
                    env=env,
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                runs[variant].append(float(out.stdout.split()[-1]))
    median = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    return {"get_job_us": round(median["with"]), "get_job_without_ids_us": round(median["without"])}


if __name__ == "__main__":
    print(json.dumps({**middleware_and_lines(), **get_job_cpu(), "load_average": os.getloadavg()[0]}))

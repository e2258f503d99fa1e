"""The API under load on loopback: GET /jobs/{id} throughput and p99, and a 100,000-point metrics read.

Uses wrk (Debian: `apt-get install -y wrk`) when it is installed, else a bounded asyncio generator
(keep-alive connections, a fixed duration, 127.0.0.1 only); every result says which.

`python -m bench.api_load` (`make bench-api`) starts the API exactly as the README does (bench/readme_api.py) on
SQLite, and on PostgreSQL when one answers at FT_TEST_POSTGRES_URL, and loads GET /jobs/{id} of a finished job with
`wrk -t2 -c8 -d10s --latency`: requests/s, p50, p99 and the API's CPU milliseconds per request.
"""

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

LOOPBACK = {"127.0.0.1", "localhost"}


def _check_loopback(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"load is only generated against loopback, not {parts.hostname}")
    return parts.hostname, parts.port or 80, parts.path or "/"


def _wrk_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def with_wrk(url: str, key: str, seconds: int, connections: int) -> dict[str, Any]:
    _check_loopback(url)
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {key}", url]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "tool": "wrk",
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _wrk_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99_ms": _wrk_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
        "connections": connections,
        "seconds": seconds,
    }


async def _connection(host: str, port: int, request: bytes, deadline: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            latencies.append(time.perf_counter() - started)
            errors += not head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    return errors


def with_python(url: str, key: str, seconds: int, connections: int) -> dict[str, Any]:
    host, port, path = _check_loopback(url)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    latencies: list[float] = []

    async def main() -> int:
        deadline = time.perf_counter() + seconds
        results = await asyncio.gather(
            *[_connection(host, port, request, deadline, latencies) for _ in range(connections)]
        )
        return sum(results)

    started = time.perf_counter()
    errors = asyncio.run(main())
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "tool": "python-asyncio",
        "requests_per_second": len(ordered) / elapsed,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)],
        "errors": errors,
        "connections": connections,
        "seconds": seconds,
    }


def get_job_load(base_url: str, key: str, job_id: str, seconds: int = 10, connections: int = 8) -> dict[str, Any]:
    url = f"{base_url}/jobs/{job_id}"
    httpx.get(url, headers={"Authorization": f"Bearer {key}"}).raise_for_status()  # warm, and fail early
    run = with_wrk if shutil.which("wrk") else with_python
    return run(url, key, seconds, connections)


def insert_points(job_id: str, n: int) -> None:
    """n train points for one job, inserted straight into SQL in a few large batches."""
    from sqlalchemy import insert

    from app.core.db import session_scope
    from app.models import MetricPoint, utcnow

    now = utcnow()
    for start in range(0, n, 20_000):
        rows = [
            {
                "job_id": job_id,
                "split": "train",
                "step": step,
                "epoch": step / n,
                "loss": 2.0 / (1 + step / 1000) + (0.5 if step % 9973 == 0 else 0.0),  # a decay with spikes
                "learning_rate": 1e-4,
                "grad_norm": 0.5,
                "tokens_per_second": 5000.0,
                "num_tokens": step * 2048,
                "time": now,
            }
            for step in range(start + 1, min(start + 20_000, n) + 1)
        ]
        with session_scope() as session:
            session.execute(insert(MetricPoint), rows)


def metrics_read(client: httpx.Client, job_id: str, max_points: int = 1000, repeats: int = 7) -> dict[str, Any]:
    """GET /jobs/{id}/metrics?max_points=… on a long run: the median and best of a few timed reads."""
    timings, returned = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(f"/jobs/{job_id}/metrics", params={"max_points": max_points})
        timings.append(1000 * (time.perf_counter() - started))
        response.raise_for_status()
        returned = len(response.json()["train"])
    return {"median_ms": statistics.median(timings), "best_ms": min(timings), "points_returned": returned}


def finished_job(database_url: str, tenant: str = "bench") -> str:
    """One finished job as the service records it (full spec, lineage, 40 points), for GET /jobs/{id}."""
    from sqlalchemy import create_engine

    from bench.seed_record import seed

    engine = create_engine(database_url)
    try:
        return seed(engine, tenant, queued=0, finished=1, points=40).big_job_id
    finally:
        engine.dispose()


def measure(
    database: str,
    seconds: int,
    connections: int,
    runs: int,
    workdir: Path,
    code: Path | None = None,
    uvicorn_args: list[str] | None = None,
) -> list[dict[str, Any]]:
    """`runs` loads of GET /jobs/{id} (a finished job) on a README-started API over `database`."""
    from contextlib import nullcontext

    from bench.readme_api import ReadmeApi, postgres_database, sqlalchemy_url

    results = []
    with postgres_database() if database == "postgresql" else nullcontext(None) as url:
        options: dict[str, Any] = {"code_dir": code} if code else {}
        api = ReadmeApi(workdir / database, database_url=url, uvicorn_args=uvicorn_args or [], **options).prepare()
        try:
            job_id = finished_job(sqlalchemy_url(api.env))
            api.start()
            target = f"{api.base_url}/jobs/{job_id}"
            with api.client() as client:
                for _ in range(100):  # warm: pools, caches, the first compiled queries
                    client.get(f"/jobs/{job_id}").raise_for_status()
            for run in range(runs):
                cpu_before = api.cpu_seconds()
                load = (with_wrk if shutil.which("wrk") else with_python)(target, api.key, seconds, connections)
                served = load["requests_per_second"] * seconds
                load["api_cpu_ms_per_request"] = round(1000 * (api.cpu_seconds() - cpu_before) / served, 3)
                results.append({"database": database, "run": run + 1, **load})
        finally:
            api.remove()
    return results


def main() -> None:
    from bench.readme_api import machine, postgres_answers

    parser = argparse.ArgumentParser(description="GET /jobs/{id} on the API as the README starts it")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--code", type=Path, help="run the API from this checkout (`git archive REV | tar -x -C DIR`)")
    parser.add_argument("--uvicorn-args", default="", help="added to the README's command, for a comparison")
    args = parser.parse_args()
    started = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="ft-bench-api-") as tmp:
        for database in args.databases.split(","):
            if database == "postgresql" and not postgres_answers():
                print("postgresql: none answers at FT_TEST_POSTGRES_URL; skipped")
                continue
            extra = args.uvicorn_args.split()
            for result in measure(database, args.seconds, args.connections, args.runs, Path(tmp), args.code, extra):
                results.append(result)
                print(
                    f"{database:10s} run {result['run']}: {result['requests_per_second']:7.1f} requests/s, "
                    f"p50 {result['p50_ms']:6.1f} ms, p99 {result['p99_ms']:6.1f} ms, errors {result['errors']}, "
                    f"API CPU {result['api_cpu_ms_per_request']:.2f} ms/request ({result['tool']})",
                    flush=True,
                )
    print(json.dumps({"machine_at_start": started, "machine_at_end": machine(), "results": results}))


if __name__ == "__main__":
    main()

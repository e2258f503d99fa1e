"""The API under load on loopback: GET /jobs/{id} throughput and p99, and a 100,000-point metrics read.

Uses wrk (Debian: `apt-get install -y wrk`) when it is installed, else a bounded asyncio generator
(keep-alive connections, a fixed duration, 127.0.0.1 only).
"""

import asyncio
import re
import shutil
import statistics
import subprocess
import time
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

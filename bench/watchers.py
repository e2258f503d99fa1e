"""Many watchers: 50 SSE followers of one job and 10 dashboards polling GET /jobs/{id} every 3 s while two workers
train, on the API as the README starts it (bench/readme_api.py) with a redis-server of its own.

`python -m bench.watchers` prints the pollers' p50/p99, the API's CPU seconds over the run, the events each
follower got against the job's full stream (none lost, none twice), and how many blocked XREADs the API held in
Redis (CLIENT LIST): one per followed job, not one per follower. docs/operations.md, "Watchers".
"""

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from finetune_client.sse import SseEvent, SseParser

from app.broker import events
from bench.readme_api import ReadmeApi, machine
from ftctl.localstack import LocalStack, free_port

SSE_TIMEOUT = httpx.Timeout(30, read=300)
QUOTES = [
    {"quote": "Be yourself; everyone else is already taken.", "tags": ["be-yourself", "honesty"]},
    {"quote": "So many books, so little time.", "tags": ["books", "humor"]},
    {"quote": "A room without books is like a body without a soul.", "tags": ["books", "soul"]},
    {"quote": "You only live once, but if you do it right, once is enough.", "tags": ["humor", "life"]},
]


def job_spec(dataset_id: str, steps: int) -> dict[str, Any]:
    return {
        "base_model": "tiny-llama",
        "dataset": dataset_id,
        "format": {"type": "template", "template": "{quote} ->: {tags}"},
        "training": {"max_steps": steps, "learning_rate": 3e-3, "batch_size": 4, "eval_fraction": 0.1,
                     "eval_every_steps": 5},
    }  # fmt: skip


async def follow(http: httpx.AsyncClient, job_id: str, last_id: str | None = None) -> list[SseEvent]:
    """Every event of the job's stream (after `last_id`) until the server ends it with the job."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    got, parser = [], SseParser()
    async with http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=SSE_TIMEOUT) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if (event := parser.feed(line)) is not None:
                got.append(event)
    return got


async def poll(http: httpx.AsyncClient, job_id: str, every_s: float, stop: asyncio.Event) -> list[tuple[float, float]]:
    """GET /jobs/{id} every `every_s` (with If-None-Match, as a browser revalidates) until `stop`: (when, latency)
    in seconds of time.perf_counter()."""
    latencies, etag = [], None
    while not stop.is_set():
        started = time.perf_counter()
        response = await http.get(f"/jobs/{job_id}", headers={"If-None-Match": etag} if etag else {})
        latencies.append((started, time.perf_counter() - started))
        assert response.status_code in (200, 304), response.text
        etag = response.headers.get("etag", etag)
        with contextlib.suppress(TimeoutError):  # the next poll, or the end
            await asyncio.wait_for(stop.wait(), every_s)
    return latencies


def reader_connections(redis_url: str) -> tuple[int, int]:
    """(connections the API's event streams hold in Redis, those of them blocked in XREAD now)."""
    client = redis.Redis.from_url(redis_url)
    try:
        named = [c for c in client.client_list() if c.get("name") == events.STREAM_CLIENT_NAME]
    finally:
        client.close()
    return len(named), sum(1 for c in named if c.get("cmd") == "xread" and "b" in c.get("flags", ""))


def exactly_once(got: list[SseEvent], truth: list[SseEvent]) -> bool:
    """The follower's events are the stream's, in order, none missing or repeated."""
    return [(e.id, e.event, e.data) for e in got] == [(e.id, e.event, e.data) for e in truth]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _watch(api: ReadmeApi, job_ids: list[str], followers: int, pollers: int, redis_url: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api.key}"}
    limits = httpx.Limits(max_connections=followers + pollers + 10)
    async with httpx.AsyncClient(base_url=api.base_url, headers=headers, limits=limits, timeout=60) as http:
        stop, cpu_before, started = asyncio.Event(), api.cpu_seconds(), time.perf_counter()
        following = [asyncio.create_task(follow(http, job_ids[0])) for _ in range(followers)]
        polling = [asyncio.create_task(poll(http, job_ids[i % len(job_ids)], 3.0, stop)) for i in range(pollers)]
        samples = []
        while not all(task.done() for task in following):
            samples.append(reader_connections(redis_url))
            await asyncio.sleep(0.5)
        got = await asyncio.gather(*following)
        for job_id in job_ids[1:]:  # the pollers watch every job until all have ended
            while (await http.get(f"/jobs/{job_id}")).json()["status"] not in ("succeeded", "failed", "cancelled"):
                await asyncio.sleep(1)
        stop.set()
        timed = [s for task in polling for s in await task]
        latencies = [latency for _, latency in timed]
        slowest = sorted(timed, key=lambda t: -t[1])[:5]
        cpu, seconds = api.cpu_seconds() - cpu_before, time.perf_counter() - started
        truth = await follow(http, job_ids[0])  # the whole stream, replayed
    return {
        "followers": followers,
        "pollers": pollers,
        "events_in_stream": len(truth),
        "followers_with_every_event_once": sum(exactly_once(g, truth) for g in got),
        "poll_requests": len(latencies),
        "poll_p50_ms": round(1000 * quantile(latencies, 0.5), 1),
        "poll_p99_ms": round(1000 * quantile(latencies, 0.99), 1),
        "poll_p99_after_first_5s_ms": round(1000 * quantile([ms for at, ms in timed if at - started >= 5], 0.99), 1),
        "slowest_polls": [{"at_s": round(at - started, 1), "ms": round(1000 * ms, 1)} for at, ms in slowest],
        "api_cpu_seconds": round(cpu, 2),
        "seconds": round(seconds, 1),
        "api_cpu_share": round(cpu / seconds, 3),
        "stream_connections_max": max(n for n, _ in samples),
        "blocked_xreads_max": max(b for _, b in samples),
    }


def run(workdir: Path, followers: int, pollers: int, steps: int, code: Path | None = None) -> dict[str, Any]:
    """Start a redis-server, the API as the README does and two workers; train two jobs; watch the first."""
    models = workdir / "models"
    if not (models / "tiny-llama" / "config.json").exists():
        from worker.training.tiny import make_tiny_model  # the worker's stack: this bench trains

        make_tiny_model(models / "tiny-llama")
    side = LocalStack(env={**os.environ}, log_dir=workdir / "logs")
    side.log_dir.mkdir(parents=True, exist_ok=True)
    side.start_redis(free_port())
    redis_url = side.env["FT_REDIS_URL"]
    extra = {"FT_MODELS_DIR": str(models), "FT_MAX_EVENT_STREAMS": str(followers + 10), "HF_HUB_OFFLINE": "1"}
    options: dict[str, Any] = {"code_dir": code} if code else {}  # another checkout's API (workers: this one's)
    api = ReadmeApi(workdir / "api", redis_url=redis_url, extra_env=extra, **options).prepare().start()
    workers = LocalStack(env=api.env, log_dir=workdir / "logs")
    try:
        for name in ("worker-1", "worker-2"):
            workers.start_worker(name)
        with api.client() as client:
            rows = "\n".join(json.dumps(row) for row in QUOTES * 16).encode()
            dataset = client.post("/datasets", files={"file": ("quotes.jsonl", rows)}, data={"name": "quotes"})
            dataset.raise_for_status()
            job_ids = [client.post("/jobs", json=job_spec(dataset.json()["id"], steps)).json()["id"] for _ in "ab"]
        return asyncio.run(_watch(api, job_ids, followers, pollers, redis_url))
    finally:
        for name in list(workers.processes):
            workers.stop_process(name)
        api.stop()
        side.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=50)
    parser.add_argument("--pollers", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60, help="training steps of each of the two jobs")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--code", type=Path, help="the API from this checkout (`git archive REV | tar -x -C DIR`)")
    args = parser.parse_args()
    at_start = machine()
    with tempfile.TemporaryDirectory(prefix="ft-bench-watchers-") as tmp:
        figures = run(args.workdir or Path(tmp), args.followers, args.pollers, args.steps, args.code)
    print(json.dumps({"machine_at_start": at_start, "machine_at_end": machine(), **figures}, indent=1))


if __name__ == "__main__":
    main()

"""Scale of the record: the API as the README starts it over 10,000 queued jobs and 1,000,000 metric points.

`python -m bench.record_scale [--databases sqlite,postgresql]` seeds the record (bench/seed_record.py), starts
`uvicorn app.main:app` (bench/readme_api.py) and times, one request after another, p50 and p99 of POST /jobs,
GET /jobs/{id} of the tenant's newest queued job (queue position 10,000), GET /jobs?status=queued (a page of 50 with
their positions) and GET /jobs/{id}/metrics of the big job; then the reconciler's sweep, in this process against the
same database, steady and after a Redis restart (every queued job to re-send). docs/operations.md, "Scale".
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, update
from sqlalchemy.orm import sessionmaker

from bench.readme_api import ReadmeApi, machine, postgres_answers, postgres_database, sqlalchemy_url
from bench.seed_record import seed
from bench.watchers import QUOTES

LIMITS = '{"bench": {"max_queued_jobs": 1000000, "submit_rate_per_minute": 1000000}}'  # the seeded tenant's


def timed(fn: Callable[[], httpx.Response], times: int) -> dict[str, float]:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        fn().raise_for_status()
        seconds.append(time.perf_counter() - started)
    ordered = sorted(seconds)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
        "requests": times,
    }


def _requests(client: httpx.Client, seeded: Any, dataset_id: str, times: int) -> dict[str, Any]:
    spec = {"base_model": "tiny-llama", "dataset": dataset_id, "format": {"type": "template",
            "template": "{quote} ->: {tags}"}, "training": {"max_steps": 30}}  # fmt: skip
    newest, big = seeded.queued_ids[-1], seeded.big_job_id
    # Each max_points a curve not yet computed (the in-process cache keys on it): what a first read costs.
    sizes = iter(range(2000, 1000, -1))
    cold = timed(lambda: client.get(f"/jobs/{big}/metrics", params={"max_points": next(sizes)}), min(times, 20))
    figures = {f"GET /jobs/{{id}}/metrics?max_points=~2000 (big job: {seeded.big_job_points:,} points, computed)": cold}
    page = client.get("/jobs", params={"status": "queued", "limit": 50}).json()
    assert page["data"][0]["queue_position"], page["data"][0]
    work = {
        "GET /jobs/{id} (queued, position ~10,000)": lambda: client.get(f"/jobs/{newest}"),
        "GET /jobs?status=queued (50, with positions)": lambda: client.get("/jobs", params={"status": "queued"}),
        "GET /jobs?status=queued, a later page": lambda: client.get(
            "/jobs", params={"status": "queued", "cursor": page["next_cursor"]}
        ),
        "GET /jobs/{id}/metrics?max_points=2000 (big job, cached)": lambda: client.get(
            f"/jobs/{big}/metrics", params={"max_points": 2000}
        ),
        "GET /jobs/{id}/metrics?since_step= (big job's newest)": lambda: client.get(
            f"/jobs/{big}/metrics", params={"since_step": seeded.big_job_points - 10}
        ),
        "POST /jobs": lambda: client.post("/jobs", json=spec),
    }
    for name, fn in work.items():
        fn()  # warm
        figures[name] = timed(fn, times)
    return figures


def _sweeps(url: str) -> dict[str, Any]:
    from app.jobs import reconciler
    from app.models import Job

    engine = create_engine(url)
    make_session = sessionmaker(bind=engine, expire_on_commit=False)
    try:
        steady = [_seconds(lambda: reconciler.reconcile_once(make_session)) for _ in range(5)]
        with make_session() as session:  # a Redis restart: the reconciler re-sends every queued job
            session.execute(update(Job).where(Job.status == "queued").values(enqueued_at=None))
            session.commit()
        backlog = [_seconds(lambda: reconciler.reconcile_once(make_session)) for _ in range(3)]
    finally:
        engine.dispose()
    return {
        "first_s": round(steady[0], 3),  # a new process: the Celery client and the connections are made
        "steady_max_s": round(max(steady[1:]), 3),
        "after_redis_restart_max_s": round(max(backlog), 3),
    }


def _broker_known(api: ReadmeApi) -> None:
    """Mark the bench's Redis as the broker the record's jobs were sent to: the API's reconciler then sweeps as
    it does any day, instead of re-sending all 10,000 queued jobs as after a Redis restart (measured apart)."""
    from app.jobs.reconciler import BROKER_EPOCH_KEY

    client = redis.Redis.from_url(api.redis_url)
    client.set(BROKER_EPOCH_KEY, "bench", nx=True)
    client.close()


def _seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(
    database: str, workdir: Path, queued: int, points: int, times: int, code: Path | None = None
) -> dict[str, Any]:
    from worker.training.tiny import make_tiny_model  # POST /jobs checks the spec against a real tokenizer

    models = workdir / "models"
    if not (models / "tiny-llama" / "config.json").exists():
        make_tiny_model(models / "tiny-llama")
    extra = {"FT_TENANT_LIMITS": LIMITS, "FT_MODELS_DIR": str(models)}
    with postgres_database() if database == "postgresql" else nullcontext(None) as url:
        options: dict[str, Any] = {"code_dir": code} if code else {}
        api = ReadmeApi(workdir / database, database_url=url, extra_env=extra, **options).prepare()
        try:
            engine = create_engine(sqlalchemy_url(api.env))
            seeded = seed(engine, "bench", queued=queued, points=points, queue=api.env["FT_TRAINING_QUEUE"])
            engine.dispose()
            _broker_known(api)
            api.start()
            with api.client() as client:
                rows = "\n".join(json.dumps(row) for row in QUOTES * 16).encode()
                dataset = client.post("/datasets", files={"file": ("q.jsonl", rows)}, data={"name": "q"}).json()
                figures = _requests(client, seeded, dataset["id"], times)
            api.stop()  # the sweeps alone on the database, as one API replica's reconciler runs them
            figures["reconciler sweep"] = _sweeps(sqlalchemy_url(api.env))
        finally:
            api.remove()
    return {"database": database, "seed_seconds": round(seeded.seconds, 1), **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--times", type=int, default=200, help="requests timed per endpoint")
    parser.add_argument("--code", type=Path, help="the API from this checkout (the sweeps are this checkout's)")
    args = parser.parse_args()
    results = {"machine_at_start": machine(), "results": []}
    with tempfile.TemporaryDirectory(prefix="ft-bench-record-") as tmp:
        for database in args.databases.split(","):
            if database == "postgresql" and not postgres_answers():
                print("postgresql: none answers at FT_TEST_POSTGRES_URL; skipped")
                continue
            result = measure(database, Path(tmp), args.queued, args.points, args.times, args.code)
            results["results"].append(result)
            print(json.dumps(result, indent=1), flush=True)
    results["machine_at_end"] = machine()
    print(json.dumps(results))


if __name__ == "__main__":
    main()

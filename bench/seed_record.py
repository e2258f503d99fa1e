"""Seed a large SQL record fast: queued jobs, finished jobs with their adapters and metric points, for scale.

`python -m bench.seed_record --database-url URL` writes 10,000 queued jobs and 1,000,000 metric points in bulk
(one executemany per table on SQLite, COPY on PostgreSQL) into a database already at `alembic upgrade head`.
The rows look like the service's own: a full spec, an estimate and lineage where the service writes them, the
denormalised progress columns, queue and priority. The queued jobs all belong to one tenant (raise its
`max_queued_jobs` with FT_TENANT_LIMITS to submit more): the worst case for its queue positions and listings.
"""

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, insert, text

from app.models import Artifact, Job, MetricPoint, new_id, utcnow
from app.spec.job import JobSpec

POINT_COLUMNS = (
    "job_id",
    "split",
    "step",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "num_tokens",
    "time",
)
BATCH = 50_000


@dataclass
class Seeded:
    """What was written, and the ids a measurement needs."""

    tenant: str
    queued_ids: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)
    big_job_id: str = ""
    big_job_points: int = 0
    points: int = 0
    seconds: float = 0.0


def default_spec() -> dict[str, Any]:
    """A spec as POST /jobs stores it (every default filled in)."""
    spec = {
        "name": "quotes-tagger",
        "base_model": "tiny-llama",
        "dataset": "ds_" + "0" * 24,
        "format": {"type": "template", "template": "{quote} ->: {tags}"},
        "training": {"max_steps": 400, "learning_rate": 2e-4},
    }
    return JobSpec.model_validate(spec).model_dump(mode="json")


def _lineage(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset_sha256": "a" * 64,
        "validation_dataset_sha256": None,
        "format_sha256": "b" * 64,
        "base_model": spec["base_model"],
        "seed": 42,
        "device": "cpu",
        "libraries": {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.0", "trl": "1.16.0"},
    }


def _job_rows(
    tenant: str, n: int, status: str, now: datetime, template: dict[str, Any], queue: str, steps: int
) -> list[dict[str, Any]]:
    rng = random.Random(n)
    rows = []
    for i in range(n):
        created = now - timedelta(seconds=(n - i) * 3)
        row = {
            "id": new_id("job"),
            "tenant": tenant,
            "name": template["spec"].get("name"),
            "status": status,
            "spec": template["spec"],
            "estimate": template.get("estimate"),
            "created_at": created,
            "enqueued_at": created,
            "queue": queue,
            "priority": rng.choice((0, 0, 0, 0, 1, 5)),  # mostly the default, some urgent ones
            "attempts": 0,
            "step": 0,
            "epoch": 0.0,
            "total_steps": steps,
        }
        if status != "queued":
            row.update(
                started_at=created + timedelta(seconds=1),
                finished_at=created + timedelta(seconds=2),
                attempts=1,
                step=steps,
                epoch=1.0,
                latest_loss=0.9,
                latest_learning_rate=0.0,
                trainable_parameters=1_126_400,
                total_parameters=6_000_000,
                lineage=_lineage(template["spec"]),
            )
        rows.append(row)
    return rows


def _points(job_id: str, steps: int, now: datetime) -> list[tuple]:
    return [
        (job_id, "train", s, s / steps, 2.0 / (1 + s / 1000) + (0.5 if s % 9973 == 0 else 0.0), 2e-4, 0.5, 5000.0,
         s * 2048, now)
        for s in range(1, steps + 1)
    ]  # fmt: skip


def _write_points(engine: Engine, rows: list[tuple]) -> None:
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur, cur.copy(f"COPY metric_points ({', '.join(POINT_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            raw.commit()
        finally:
            raw.close()
        return
    # SQLite: the driver's executemany with the time already in SQLAlchemy's stored form (its DateTime processor).
    as_stored = MetricPoint.__table__.c.time.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
    marks = ", ".join("?" for _ in POINT_COLUMNS)
    raw = engine.raw_connection()
    try:
        raw.cursor().executemany(
            f"INSERT INTO metric_points ({', '.join(POINT_COLUMNS)}) VALUES ({marks})",
            [(*row[:-1], as_stored(row[-1])) for row in rows],
        )
        raw.commit()
    finally:
        raw.close()


def seed(
    engine: Engine,
    tenant: str = "bench",
    queued: int = 10_000,
    finished: int = 2_000,
    points: int = 1_000_000,
    big_job_points: int | None = None,
    template: dict[str, Any] | None = None,
    queue: str = "training",
) -> Seeded:
    """Queued jobs, finished jobs sharing `points` metric points, one of them (the big job) holding
    `big_job_points` (a fifth by default); returns their ids. `template`: {"spec", "estimate"} to copy."""
    started = time.perf_counter()
    template = template or {"spec": default_spec(), "estimate": None}
    now = utcnow()
    big = points // 5 if big_job_points is None else big_job_points
    per_job = (points - big) // max(finished - 1, 1)
    big = points - per_job * (finished - 1)  # the big job takes the remainder: `points` in all
    done = _job_rows(tenant, finished, "succeeded", now - timedelta(days=2), template, queue, per_job)
    done[-1]["step"] = done[-1]["total_steps"] = big
    queued_rows = _job_rows(tenant, queued, "queued", now, template, queue, 400)
    with engine.begin() as conn:
        for rows in (done, queued_rows):  # each with its own columns: one executemany needs the same keys
            for i in range(0, len(rows), 5_000):
                conn.execute(insert(Job.__table__), rows[i : i + 5_000])
    adapters = [
        {"job_id": r["id"], "name": "adapter", "kind": "adapter", "path": f"jobs/{r['id']}/adapter.tar.gz",
         "size_bytes": 5_000_000, "sha256": "c" * 64, "step": r["step"], "created_at": r["finished_at"]}
        for r in done
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(Artifact.__table__), adapters)
    result = Seeded(tenant, [r["id"] for r in queued_rows], [r["id"] for r in done], done[-1]["id"], big)
    pending: list[tuple] = []
    for row in done:
        pending += _points(row["id"], row["step"], row["finished_at"])
        if len(pending) >= BATCH:
            _write_points(engine, pending)
            result.points += len(pending)
            pending = []
    if pending:
        _write_points(engine, pending)
        result.points += len(pending)
    if engine.dialect.name == "postgresql":  # what autovacuum does soon after a bulk load: statistics, visibility
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE jobs"))
            conn.execute(text("VACUUM ANALYZE metric_points"))
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="SQLAlchemy URL of a database at `alembic upgrade head`")
    parser.add_argument("--tenant", default="bench")
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--finished", type=int, default=2_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--big-job-points", type=int, default=None)
    args = parser.parse_args()
    engine = create_engine(args.database_url)
    seeded = seed(engine, args.tenant, args.queued, args.finished, args.points, args.big_job_points)
    print(
        json.dumps(
            {
                "tenant": seeded.tenant,
                "queued": len(seeded.queued_ids),
                "finished": len(seeded.finished_ids),
                "points": seeded.points,
                "big_job_id": seeded.big_job_id,
                "seconds": round(seeded.seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

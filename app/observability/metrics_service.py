"""A job's curves from the SQL record: incremental, downsampled, as JSON points or a CSV results file.

Long runs hold 100k+ points, and turning each row into a Python object costs more than the database's
work, so downsampling happens in SQL: the step range is cut into buckets and one GROUP BY per bucket
finds the steps of its lowest and highest loss; only those rows (at most max_points) are then read.
A downsampled curve is kept in a small in-process cache keyed by the job's progress, so a finished
job's curve (which never changes) is computed once and then served from memory.
"""

import csv
import io
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Select, cast, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from app.broker import events
from app.models import Job, MetricPoint
from app.observability.curves import downsample_indices

TRAIN_FIELDS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "num_tokens")
EVAL_FIELDS = ("step", "epoch", "eval_loss")
CSV_FIELDS = (
    "split",
    "step",
    "epoch",
    "loss",
    "eval_loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "num_tokens",
    "peak_memory_mb",
    "time",
)
_ROW_COLUMNS = (
    MetricPoint.step,
    MetricPoint.epoch,
    MetricPoint.loss,
    MetricPoint.learning_rate,
    MetricPoint.grad_norm,
    MetricPoint.tokens_per_second,
    MetricPoint.num_tokens,
    MetricPoint.extra,
    MetricPoint.time,
)
IN_CHUNK = 900  # bound parameters per IN (...) list: well under every driver's limit
FULL_READ_ABOVE = 5000  # keeping more points than this: read the range once and filter in Python


def _iso(value: datetime) -> str:
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they are stored as UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


def _where(query: Select, job_id: str, split: str, since_step: int | None) -> Select:
    query = query.where(MetricPoint.job_id == job_id, MetricPoint.split == split)
    if since_step is not None:
        query = query.where(MetricPoint.step > since_step)
    return query


def _point(split: str, row: Any) -> dict[str, Any]:
    step, epoch, loss, lr, grad_norm, tps, tokens, extra, time = row
    if split == "train":
        point = {
            "step": step,
            "epoch": epoch,
            "loss": loss,
            "learning_rate": lr,
            "grad_norm": grad_norm,
            "tokens_per_second": tps,
            "num_tokens": tokens,
        }
    else:
        point = {"step": step, "epoch": epoch, "eval_loss": loss}
    for key, value in (extra or {}).items():
        point.setdefault(key, value)  # peak_memory_mb, mean_token_accuracy, accuracy, f1, ...
    point["time"] = _iso(time)
    return point


def _rows_at(session: Session, job_id: str, split: str, steps: list[int], since_step: int | None) -> list[Any]:
    if len(steps) > FULL_READ_ABOVE:
        wanted = set(steps)
        query = _where(select(*_ROW_COLUMNS), job_id, split, since_step).order_by(MetricPoint.step)
        return [row for row in session.execute(query) if row[0] in wanted]
    rows: list[Any] = []
    for i in range(0, len(steps), IN_CHUNK):
        chunk = steps[i : i + IN_CHUNK]
        query = _where(select(*_ROW_COLUMNS), job_id, split, None).where(MetricPoint.step.in_(chunk))
        rows.extend(session.execute(query))
    rows.sort(key=lambda row: row[0])
    return rows


def _step_bounds(session: Session, job_id: str, split: str, since_step: int | None) -> tuple[int, int] | None:
    # Two index probes; a single SELECT min(), max() would scan the whole range on SQLite.
    steps = _where(select(MetricPoint.step), job_id, split, since_step)
    lo = session.scalar(steps.order_by(MetricPoint.step).limit(1))
    hi = session.scalar(steps.order_by(MetricPoint.step.desc()).limit(1))
    return None if lo is None else (lo, hi)


def _kept_steps_sql(
    session: Session, job_id: str, split: str, since_step: int | None, max_points: int
) -> list[int] | None:
    """The steps to keep, found in SQL; None when the range holds no more than max_points points.

    Buckets are equal spans of steps; each keeps the steps of its lowest and highest loss (a bucket
    with no loss at all keeps one step, so the gap shows), and the first and last steps are kept.
    """
    bounds = _step_bounds(session, job_id, split, since_step)
    if bounds is None or bounds[1] - bounds[0] + 1 <= max_points:
        return None
    lo, hi = bounds
    buckets = (max_points - 2) // 2
    bucket = cast(MetricPoint.step - lo, BigInteger) * buckets // (hi - lo + 1)
    kept = {lo, hi}
    if session.get_bind().dialect.name == "postgresql":
        # min()/max() of an array compare element by element: the (loss, step) pair of the extreme loss.
        pair = postgresql.array([MetricPoint.loss, cast(MetricPoint.step, Float)])
        has_loss = MetricPoint.loss.is_not(None)
        columns = (
            func.min(pair).filter(has_loss),
            func.max(pair).filter(has_loss),
            func.min(MetricPoint.step),
            func.count(),
        )
        rows = session.execute(_where(select(*columns), job_id, split, since_step).group_by(bucket)).all()
        if sum(row[3] for row in rows) <= max_points:
            return None
        for low, high, first, _count in rows:
            kept.update((int(low[1]), int(high[1])) if low else (first,))
        return sorted(kept)
    # SQLite: with exactly one min() or max() in a query, the bare `step` comes from that row.
    query = _where(select(MetricPoint.step, func.max(MetricPoint.loss), func.count()), job_id, split, since_step)
    highs = session.execute(query.group_by(bucket)).all()
    if sum(row[2] for row in highs) <= max_points:
        return None
    query = _where(select(MetricPoint.step, func.min(MetricPoint.loss)), job_id, split, since_step)
    lows = session.execute(query.group_by(bucket)).all()
    kept.update(row[0] for row in highs)
    kept.update(row[0] for row in lows)
    return sorted(kept)


def _kept_steps_python(
    session: Session, job_id: str, split: str, since_step: int | None, max_points: int
) -> list[int] | None:
    """The same choice made in Python from (step, loss) pairs, for databases without the SQL above."""
    query = _where(select(MetricPoint.step, MetricPoint.loss), job_id, split, since_step)
    pairs = session.execute(query.order_by(MetricPoint.step)).all()
    if len(pairs) <= max_points:
        return None
    return [pairs[i][0] for i in downsample_indices([loss for _step, loss in pairs], max_points)]


class _CurveCache:
    """A few recent downsampled curves (LRU); the key holds the job's progress, so a change misses."""

    def __init__(self, entries: int = 32):
        self.entries, self.lock = entries, threading.Lock()
        self.curves: OrderedDict[tuple, list[dict[str, Any]]] = OrderedDict()

    def get(self, key: tuple) -> list[dict[str, Any]] | None:
        with self.lock:
            if key in self.curves:
                self.curves.move_to_end(key)
            return self.curves.get(key)

    def put(self, key: tuple, points: list[dict[str, Any]]) -> None:
        with self.lock:
            self.curves[key] = points
            while len(self.curves) > self.entries:
                self.curves.popitem(last=False)


_downsampled = _CurveCache()


def curve(
    session: Session, job: Job, split: str, since_step: int | None = None, max_points: int | None = None
) -> list[dict[str, Any]]:
    """One split's points with step > since_step, in step order; at most max_points, keeping spikes.

    The points returned may be shared with later calls: read them, do not change them.
    """
    if max_points:
        progress = (job.attempts, job.step, job.status, job.latest_eval_loss)
        key = (job.id, split, since_step, max_points, *progress)
        cached = _downsampled.get(key)
        if cached is not None:
            return cached
        in_sql = session.get_bind().dialect.name in ("sqlite", "postgresql") and max_points >= 4
        choose = _kept_steps_sql if in_sql else _kept_steps_python
        steps = choose(session, job.id, split, since_step, max_points)
        if steps is not None:
            points = [_point(split, row) for row in _rows_at(session, job.id, split, steps, since_step)]
            _downsampled.put(key, points)
            return points
    query = _where(select(*_ROW_COLUMNS), job.id, split, since_step).order_by(MetricPoint.step)
    return [_point(split, row) for row in session.execute(query)]


def last_event_id(job_id: str) -> str | None:
    """The job's newest event id, read *before* the curve: a client that then follows
    GET /jobs/{id}/events from it misses nothing (a point is stored in SQL before it is published)."""
    try:
        newest = events.redis_client().xrevrange(events.stream_key(job_id), count=1)
    except Exception:  # live events are an extra; the curve is served from SQL regardless
        return None
    return newest[0][0] if newest else "0"


def to_csv(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> str:
    """One results file: a row per point, `split` saying train or eval, extra metrics as extra columns."""
    extra = sorted({k for p in train + evals for k in p} - set(CSV_FIELDS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*CSV_FIELDS, *extra], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    points = [{"split": "train", **p} for p in train] + [{"split": "eval", **p} for p in evals]
    points.sort(key=lambda p: (p["step"], p["split"] != "train"))
    writer.writerows(points)
    return out.getvalue()

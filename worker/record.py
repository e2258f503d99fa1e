"""The worker's writes to the SQL record: claim a job atomically, store its points, finish it."""

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.checks.init_from import init_artifact
from app.core.config import settings
from app.models import Artifact, Dataset, Job, MetricPoint, utcnow
from app.spec.job import JobSpec
from app.spec.lineage import job_lineage

POINT_COLUMNS = {"epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "num_tokens"}
POINTS_PER_STATEMENT = 500  # x 11 columns: well under PostgreSQL's 65,535 and SQLite's 32,766 bound parameters


def claim_job(session: Session, job_id: str, worker: str) -> Job | None:
    """queued -> running, as one compare-and-set: a redelivered message or a second worker gets None."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=now,
            worker=worker,
            lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
            error_type=None,
            error_message=None,
        )
    )
    session.commit()
    if result.rowcount != 1:
        return None
    return session.get(Job, job_id)


def claim_queued_request(session: Session, model: type[Any], request_id: str) -> tuple[Any, Job] | None:
    """Claim a queued export or evaluation (compare-and-set to `running`, heartbeat started) -> (row, its job)."""
    claimed = session.execute(
        update(model)
        .where(model.id == request_id, model.status == "queued")
        .values(status="running", started_at=utcnow(), heartbeat_at=utcnow())
    )
    if claimed.rowcount != 1:
        return None
    row = session.get(model, request_id)
    return row, session.get(Job, row.job_id)


def renew_lease(session: Session, job_id: str, worker: str) -> bool:
    """Extend this worker's lease; False when the job is no longer this worker's to run.

    A lease that has already expired is not renewed, even when the reconciler has not yet taken the job back: after
    a database outage longer than the lease the attempt ends and the job resumes from its checkpoint, always, rather
    than depending on which of the two reached the row first."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.worker == worker,
            Job.status.in_(("running", "cancelling")),
            Job.lease_expires_at > now,
        )
        .values(lease_expires_at=now + timedelta(seconds=settings.lease_seconds))
    )
    return result.rowcount == 1


def _insert_ignoring_duplicates(session: Session, values: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # In slices: the points buffered through a database outage can outnumber a statement's bind-parameter limit.
    for start in range(0, len(values), POINTS_PER_STATEMENT):
        rows = values[start : start + POINTS_PER_STATEMENT]
        stmt = insert(MetricPoint).values(rows).on_conflict_do_nothing(index_elements=["job_id", "split", "step"])
        session.execute(stmt)


def store_points(session: Session, job_id: str, points: list[tuple[str, dict[str, Any]]]) -> None:
    """Insert train/eval points (a replayed step is ignored) and move the job's progress forward."""
    if not points or job_status(session, job_id) is None:
        return  # nothing to store, or the job was deleted while it ran (DELETE /jobs/{id})
    rows, progress = [], {}
    for split, point in points:
        row = {k: point.get(k) for k in POINT_COLUMNS}
        if split == "eval":
            row["loss"] = point.get("eval_loss")
        extra = {
            k: v
            for k, v in point.items()
            if k not in POINT_COLUMNS | {"step", "eval_loss", "total_steps", "eta_seconds"} and v is not None
        }
        rows.append(
            {
                **row,
                "job_id": job_id,
                "split": split,
                "step": point["step"],
                "extra": extra or None,
                "time": utcnow(),
            }
        )
        if split == "train":
            progress.update(
                step=point["step"],
                total_steps=point.get("total_steps"),
                epoch=point.get("epoch") or 0.0,
                eta_seconds=point.get("eta_seconds"),
                latest_loss=point.get("loss"),
                latest_learning_rate=point.get("learning_rate"),
            )
        else:
            progress["latest_eval_loss"] = point.get("eval_loss")
    _insert_ignoring_duplicates(session, rows)
    if progress:
        session.execute(update(Job).where(Job.id == job_id).values(**progress))


def set_parameters(session: Session, job_id: str, trainable: int, total: int) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(trainable_parameters=trainable, total_parameters=total))


def finish_job(
    session: Session, job_id: str, status: str, error: tuple[str, str] | None = None, worker: str | None = None
) -> bool:
    """Record the job's outcome; with `worker`, only while the job is still that worker's running job (a
    compare-and-set: an attempt whose lease went to another worker records nothing). True when recorded."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "lease_expires_at": None,
        "eta_seconds": None,
    }
    if error:
        values.update(error_type=error[0], error_message=error[1])
    mine = (Job.worker == worker, Job.status.in_(("running", "cancelling"))) if worker is not None else ()
    return session.execute(update(Job).where(Job.id == job_id, *mine).values(**values)).rowcount == 1


def requeue_job(session: Session, job_id: str, worker: str | None = None) -> bool:
    """Back to `queued` (drained, out of memory); with `worker`, only while the job is that worker's running job."""
    mine = (Job.worker == worker, Job.status.in_(("running", "cancelling"))) if worker is not None else ()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, *mine)
        .values(status="queued", worker=None, lease_expires_at=None, enqueued_at=None, eta_seconds=None)
    )
    return result.rowcount == 1


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(enqueued_at=utcnow()))


def update_spec(session: Session, job_id: str, spec: dict[str, Any]) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(spec=spec))


def drop_points_after(session: Session, job_id: str, step: int) -> None:
    """Forget points past the step an attempt resumes from: the new attempt logs those steps again."""
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step))
    session.execute(update(Job).where(Job.id == job_id).values(step=step))


def job_status(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def add_artifact(session: Session, job_id: str, name: str, **fields: Any) -> None:
    """Record an artifact, replacing one of the same name (a resumed attempt re-saves a checkpoint)."""
    if job_status(session, job_id) is None:
        return  # the job was deleted while it ran: its files go when the attempt ends
    session.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    session.add(Artifact(job_id=job_id, name=name, **fields))


def discard_deleted_outputs(session: Session, job_id: str) -> bool:
    """True when the job was deleted, or its files were (keep_metrics), while it ran: its outputs must go too."""
    deleted_at = session.execute(select(Job.artifacts_deleted_at).where(Job.id == job_id)).first()
    if deleted_at is not None and deleted_at[0] is None:
        return False
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    return True


def set_lineage(session: Session, job_id: str, spec: JobSpec, device: str) -> dict[str, Any]:
    """Record what this attempt runs with (app/spec/lineage.py): data and format hashes, libraries, device, seed."""
    shas = [
        session.scalar(select(Dataset.sha256).where(Dataset.id == ref)) if isinstance(ref, str) else None
        for ref in (spec.dataset, spec.validation_dataset)
    ]
    value = job_lineage(spec, shas[0], device, shas[1])
    if spec.init_from is not None and spec.init_from.hub is not None:  # a Hub adapter repo it continues
        value["parent"] = {"hub": spec.init_from.hub, "revision": spec.init_from.revision}
    elif spec.init_from is not None:  # the adapter this job continues from
        parent = init_artifact(session, spec.init_from.job, spec.init_from.checkpoint_step)
        value["parent"] = {
            "job": spec.init_from.job,
            "checkpoint_step": spec.init_from.checkpoint_step,
            "artifact": parent.name if parent else None,
            "adapter_sha256": parent.sha256 if parent else None,
        }
    session.execute(update(Job).where(Job.id == job_id).values(lineage=value))
    return value


def set_evaluation(session: Session, job_id: str, evaluation: dict[str, Any] | None) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(evaluation=evaluation))


def train_losses(session: Session, job_id: str) -> list[tuple[int, float]]:
    """(step, loss) of the job's train curve, for the model card's plot."""
    rows = session.execute(
        select(MetricPoint.step, MetricPoint.loss)
        .where(MetricPoint.job_id == job_id, MetricPoint.split == "train", MetricPoint.loss.is_not(None))
        .order_by(MetricPoint.step)
    )
    return [(step, loss) for step, loss in rows]

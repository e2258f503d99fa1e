"""A job's history in OpenAI's shapes: events (from its timestamps, metric points and checkpoints) and checkpoints.

Built from the SQL record rather than the live Redis stream, so a page is complete and the same on every read.
An event id says where the event sits in the job's history, `ftevent-<job>-<phase>-<step>-<order>`, so
`after=<id>` pages through SQL without remembering anything.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs import service as jobs_service
from app.models import Artifact, Job, MetricPoint
from app.openai.schemas import CheckpointMetrics, CheckpointObject, EventObject, ListObject
from app.openai.service import fine_tuned_model_name, unix
from app.openai.spec import invalid

Key = tuple[int, int, int]  # (phase, step, order): sorts a job's events oldest first
CREATED, STARTED, TRAINING, FINISHED = range(4)
METRICS, CHECKPOINT = 0, 1  # within a step: its metrics, then a checkpoint saved at it


@dataclass(frozen=True)
class JobEvent:
    key: Key
    created_at: datetime
    message: str
    level: Literal["info", "warn", "error"] = "info"
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None

    def public(self, job_id: str) -> EventObject:
        return EventObject(
            id=event_id(job_id, self.key),
            created_at=unix(self.created_at) or 0,
            level=self.level,
            message=self.message,
            type=self.type,
            data=self.data,
        )


def event_id(job_id: str, key: Key) -> str:
    return f"ftevent-{job_id}-{key[0]}-{key[1]}-{key[2]}"


def parse_event_id(job_id: str, value: str) -> Key:
    prefix = f"ftevent-{job_id}-"
    parts = value.removeprefix(prefix).split("-") if value.startswith(prefix) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise invalid(f"after: {value!r} is not an event id of job {job_id}", "after")
    return int(parts[0]), int(parts[1]), int(parts[2])


def message_events(job: Job, checkpoints: list[Artifact]) -> list[JobEvent]:
    """The job's status changes (from its timestamps) and the checkpoints it saved."""
    events = [JobEvent((CREATED, 0, 0), job.created_at, f"Created fine-tuning job: {job.id}")]
    if job.started_at is not None:
        attempt = f" (attempt {job.attempts})" if job.attempts > 1 else ""
        events.append(JobEvent((STARTED, 0, 0), job.started_at, f"Fine-tuning job started{attempt}"))
    for artifact in checkpoints:
        step = artifact.step or 0
        events.append(
            JobEvent(
                (TRAINING, step, CHECKPOINT),
                artifact.created_at,
                f"Checkpoint created at step {step}",
                data={"step": step, "checkpoint": artifact.name},
            )
        )
    ended = job.finished_at or job.created_at
    if job.status == "succeeded":
        model = fine_tuned_model_name(job)
        created = f"New fine-tuned model created: {model}"
        events.append(JobEvent((FINISHED, 0, 0), ended, created, data={"fine_tuned_model": model}))
        events.append(JobEvent((FINISHED, 0, 1), ended, "The job has successfully completed"))
    elif job.status == "failed":
        failed = f"The job failed: {job.error_message or job.error_type or 'unknown error'}"
        events.append(JobEvent((FINISHED, 0, 0), ended, failed, "error", data={"code": job.error_type}))
    elif job.status == "cancelled":
        events.append(JobEvent((FINISHED, 0, 0), ended, "The job was cancelled"))
    return events


def metrics_event(job: Job, step: int, points: dict[str, MetricPoint]) -> JobEvent:
    """One step's train and eval points as OpenAI's `metrics` event (`train_loss`, `valid_loss`, ...)."""
    train, evals = points.get("train"), points.get("eval")
    data: dict[str, Any] = {"step": step, "total_steps": job.total_steps}
    said = []
    if train is not None:
        data.update(train_loss=train.loss, learning_rate=train.learning_rate, epoch=train.epoch)
        if train.loss is not None:
            said.append(f"training loss={train.loss:.4f}")
    if evals is not None:
        data.update(valid_loss=evals.loss, full_valid_loss=evals.loss)  # our eval covers the whole held-out set
        if evals.loss is not None:
            said.append(f"validation loss={evals.loss:.4f}")
    of_total = f"/{job.total_steps}" if job.total_steps else ""
    message = f"Step {step}{of_total}: {', '.join(said) or 'no loss reported'}"
    moment = max(p.time for p in points.values())
    return JobEvent((TRAINING, step, METRICS), moment, message, type="metrics", data=data)


def _metrics_events(session: Session, job: Job, below: Key | None, limit: int) -> list[JobEvent]:
    """The newest `limit` steps' metrics events that sort before `below`."""
    steps_query = select(MetricPoint.step).where(MetricPoint.job_id == job.id).distinct()
    if below is not None and below[0] < TRAINING:
        return []
    if below is not None and below[0] == TRAINING:
        phase_step = below[1]
        steps_query = steps_query.where(
            MetricPoint.step <= phase_step if below[2] > METRICS else MetricPoint.step < phase_step
        )
    steps = list(session.scalars(steps_query.order_by(MetricPoint.step.desc()).limit(limit)))
    if not steps:
        return []
    by_step: dict[int, dict[str, MetricPoint]] = {}
    for point in session.scalars(select(MetricPoint).where(MetricPoint.job_id == job.id, MetricPoint.step.in_(steps))):
        by_step.setdefault(point.step, {})[point.split] = point
    return [metrics_event(job, step, points) for step, points in by_step.items()]


def list_events(session: Session, job: Job, after: str | None, limit: int) -> ListObject[EventObject]:
    """Newest first; `after` continues below an event id from an earlier page."""
    below = parse_event_id(job.id, after) if after else None
    checkpoints = [a for a in jobs_service.list_artifacts(session, job) if a.kind == "checkpoint"]
    events = message_events(job, checkpoints) + _metrics_events(session, job, below, limit + 1)
    if below is not None:
        events = [e for e in events if e.key < below]
    events.sort(key=lambda e: e.key, reverse=True)
    return ListObject[EventObject].page([e.public(job.id) for e in events[:limit]], len(events) > limit)


# --- checkpoints ---


def _step(job: Job, artifact: Artifact) -> int:
    return artifact.step if artifact.step is not None else job.step


def checkpoint_id(job: Job, artifact: Artifact) -> str:
    return f"ftckpt-{job.id}-{artifact.name}"


def _loss_at(session: Session, job: Job, split: str, step: int) -> float | None:
    """The split's latest loss at or before `step`: what the weights saved at `step` had seen."""
    query = (
        select(MetricPoint.loss)
        .where(MetricPoint.job_id == job.id, MetricPoint.split == split, MetricPoint.step <= step)
        .order_by(MetricPoint.step.desc())
        .limit(1)
    )
    return session.scalar(query)


def checkpoint_object(
    session: Session, job: Job, artifact: Artifact, download_url: Callable[[str], str]
) -> CheckpointObject:
    step = _step(job, artifact)
    model = fine_tuned_model_name(job)
    valid_loss = _loss_at(session, job, "eval", step)
    return CheckpointObject(
        id=checkpoint_id(job, artifact),
        created_at=unix(artifact.created_at) or 0,
        fine_tuned_model_checkpoint=model if artifact.kind == "adapter" else f"{model}:ckpt-step-{step}",
        fine_tuning_job_id=job.id,
        step_number=step,
        metrics=CheckpointMetrics(
            step=step,
            train_loss=_loss_at(session, job, "train", step),
            valid_loss=valid_loss,
            full_valid_loss=valid_loss,
        ),
        download_url=download_url(artifact.name),
    )


def list_checkpoints(
    session: Session, job: Job, after: str | None, limit: int, download_url: Callable[[str], str]
) -> ListObject[CheckpointObject]:
    """Saved checkpoints and, once the job has succeeded, its final adapter as the newest one; newest first."""
    saved = [a for a in jobs_service.list_artifacts(session, job) if a.kind in ("checkpoint", "adapter")]
    saved.sort(key=lambda a: (_step(job, a), a.kind == "adapter"), reverse=True)
    ids = [checkpoint_id(job, a) for a in saved]
    start = 0
    if after:
        if after not in ids:
            raise invalid(f"after: {after!r} is not a checkpoint id of job {job.id}", "after")
        start = ids.index(after) + 1
    page = saved[start : start + limit]
    return ListObject[CheckpointObject].page(
        [checkpoint_object(session, job, a, download_url) for a in page], start + limit < len(saved)
    )

"""Response shapes, named by role (DatasetPublic, JobPublic, ...), built from ORM rows."""

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Row

from app.core.schemas import UtcDatetime
from app.models import Job


class Progress(BaseModel):
    step: int
    total_steps: int | None
    epoch: float
    eta_seconds: float | None


class Latest(BaseModel):
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None


class JobError(BaseModel):
    type: str
    message: str


class JobPublic(BaseModel):
    id: str
    tenant: str | None = None
    name: str | None
    status: str
    spec: dict[str, Any]
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    progress: Progress
    latest: Latest
    trainable_parameters: int | None
    total_parameters: int | None
    attempts: int
    worker: str | None = None
    error: JobError | None
    lineage: dict[str, Any] | None = None  # what the job ran with: app/spec/lineage.py
    evaluation: dict[str, Any] | None = None  # base vs adapter (training.evaluate_base)
    estimate: dict[str, Any] | None = None  # memory, time, GPU-hours at submission: app/checks/estimate.py
    artifacts_deleted_at: UtcDatetime | None = None  # files removed by DELETE ?keep_metrics=true or retention
    priority: int = 0  # the spec's priority, 0 to the tenant's max_priority (higher starts first)
    queue: str | None = None  # the broker queue it waits in: which workers can take it (docs/operations.md, Fleet)
    queue_position: int | None = Field(
        None,
        description="While queued: its place among your tenant's queued jobs in its queue (1: the next of them a "
        "worker takes). Other tenants' jobs are not counted, so it says nothing of how busy they keep the queue.",
    )

    @classmethod
    def of(cls, job: Job | Row[Any], queue_position: int | None = None) -> "JobPublic":
        """From the ORM job or its plain row (app/jobs/service.py read_job): the same attributes either way."""
        return cls(
            id=job.id,
            tenant=job.tenant,
            name=job.name,
            status=job.status,
            spec=job.spec,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            progress=Progress(step=job.step, total_steps=job.total_steps, epoch=job.epoch, eta_seconds=_eta(job)),
            latest=Latest(loss=job.latest_loss, eval_loss=job.latest_eval_loss, learning_rate=job.latest_learning_rate),
            trainable_parameters=job.trainable_parameters,
            total_parameters=job.total_parameters,
            attempts=job.attempts,
            worker=job.worker,
            error=JobError(type=job.error_type, message=job.error_message or "") if job.error_type else None,
            lineage=job.lineage,
            evaluation=job.evaluation,
            estimate=job.estimate,
            artifacts_deleted_at=job.artifacts_deleted_at,
            priority=job.priority or 0,
            queue=job.queue,
            queue_position=queue_position,
        )


def _eta(job: Job | Row[Any]) -> float | None:
    """The worker's ETA, measured from the job's own steps; before its first step, the estimate's duration."""
    if job.eta_seconds is not None or job.status != "running" or job.step or not job.estimate:
        return job.eta_seconds
    return job.estimate.get("duration_seconds")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = None


class ArtifactPublic(BaseModel):
    name: str
    kind: str
    size_bytes: int
    sha256: str
    step: int | None
    created_at: UtcDatetime
    download_url: str


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")

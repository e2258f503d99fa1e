"""Response shapes, named by role (DatasetPublic, JobPublic, ...), built from ORM rows."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from app.models import Dataset, Job


class DatasetPublic(BaseModel):
    id: str
    tenant: str | None = None
    name: str
    filename: str
    format: str
    rows: int
    columns: list[str]
    size_bytes: int
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, row: Dataset) -> "DatasetPublic":
        return cls.model_validate(row, from_attributes=True)


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None = None


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
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    latest: Latest
    trainable_parameters: int | None
    total_parameters: int | None
    attempts: int
    worker: str | None = None
    error: JobError | None

    @classmethod
    def of(cls, job: Job) -> "JobPublic":
        return cls(
            id=job.id,
            tenant=job.tenant,
            name=job.name,
            status=job.status,
            spec=job.spec,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            progress=Progress(step=job.step, total_steps=job.total_steps, epoch=job.epoch, eta_seconds=job.eta_seconds),
            latest=Latest(loss=job.latest_loss, eval_loss=job.latest_eval_loss, learning_rate=job.latest_learning_rate),
            trainable_parameters=job.trainable_parameters,
            total_parameters=job.total_parameters,
            attempts=job.attempts,
            worker=job.worker,
            error=JobError(type=job.error_type, message=job.error_message or "") if job.error_type else None,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = None


class ArtifactPublic(BaseModel):
    name: str
    kind: str
    size_bytes: int
    sha256: str
    step: int | None
    created_at: datetime
    download_url: str


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    next_cursor: str | None = None

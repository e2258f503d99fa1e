"""The shapes the API answers with, as TypedDicts: plain dicts at run time (new fields pass through), typed for
editors and type checkers. The API's OpenAPI schema (/openapi.json) is the full reference."""

from typing import Any, TypedDict


class Dataset(TypedDict):
    id: str
    tenant: str | None
    name: str
    filename: str
    format: str
    rows: int
    columns: list[str]
    size_bytes: int
    sha256: str
    created_at: str


class DatasetPreview(TypedDict):
    dataset_id: str
    rows: int
    columns: list[str]
    data: list[dict[str, Any]]


class Progress(TypedDict):
    step: int
    total_steps: int | None
    epoch: float
    eta_seconds: float | None


class Latest(TypedDict):
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None


class Job(TypedDict):
    id: str
    tenant: str | None
    name: str | None
    status: str  # queued, running, succeeded, failed, cancelling, cancelled
    spec: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: Progress
    latest: Latest
    error: dict[str, str] | None  # {"type", "message"} of a failed job
    queue_position: int | None


class Artifact(TypedDict):
    name: str
    kind: str
    size_bytes: int
    sha256: str
    step: int | None
    created_at: str
    download_url: str


class Metrics(TypedDict):
    job_id: str
    status: str
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    evaluation: dict[str, Any] | None


class Deleted(TypedDict):
    id: str
    object: str
    deleted: bool
    freed_bytes: int

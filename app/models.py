"""The SQL record: API keys, datasets, jobs, their metric points and artifacts."""

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobStatus(StrEnum):
    """A job's life: queued -> running -> succeeded | failed, or cancelling -> cancelled on the way."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# The statuses a job never leaves, as plain strings (what the column holds and SQL `IN (...)` binds).
TERMINAL_STATUSES: frozenset[str] = frozenset(
    s.value for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    name: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(20))
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[str]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # Scale of the record (migration 0009, docs/operations.md "Scale"): a tenant's jobs by status newest first
        # (GET /jobs?status=), the queued jobs the reconciler must still send; ix_jobs_queue_line below the class.
        Index("ix_jobs_tenant_status_created", "tenant", "status", "created_at", "id"),
        Index("ix_jobs_status_enqueued", "status", "enqueued_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant: Mapped[str] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), index=True, default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the canonical spec the key was first sent with: the key reused for another spec is a 422.
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Progress, denormalised from the latest metric point so GET /jobs/{id} is one row read.
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    latest_loss: Mapped[float | None] = mapped_column(Float)
    latest_eval_loss: Mapped[float | None] = mapped_column(Float)
    latest_learning_rate: Mapped[float | None] = mapped_column(Float)
    trainable_parameters: Mapped[int | None] = mapped_column(BigInteger)
    total_parameters: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Where the job waits (app/broker/queue.py routing) and its spec priority: denormalised for queue_position.
    queue: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    # What the job ran with (data and format hashes, library versions, device, seed): app/spec/lineage.py.
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Base model vs adapter on the eval data (loss, perplexity, label accuracy): worker/training/evaluation.py.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Memory, time and GPU-hours estimated at submission, and what auto_fit_batch changed: app/checks/estimate.py.
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # When DELETE /jobs/{id}?keep_metrics=true or retention removed the job's files (its record and metrics stay).
    artifacts_deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# A tenant's queue line in the order its jobs leave a queue (priority first, then age): queue_position counts along
# it, and a page's positions read it (app/jobs/service.py).
Index("ix_jobs_queue_line", Job.tenant, Job.status, Job.queue, Job.priority.desc(), Job.created_at, Job.id)


class MetricPoint(Base):
    """One logged point of a job's curve; (job, split, step) is unique so a replay never duplicates."""

    __tablename__ = "metric_points"
    __table_args__ = (
        UniqueConstraint("job_id", "split", "step", name="uq_metric_points_job_split_step"),
        Index("ix_metric_points_curve", "job_id", "split", "step", "loss"),  # downsampling reads only the index
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(10))  # "train" or "eval"
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    num_tokens: Mapped[int | None] = mapped_column(BigInteger)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))  # "adapter", "checkpoint-20", ...
    kind: Mapped[str] = mapped_column(String(20))  # "adapter", "checkpoint", "merged"
    path: Mapped[str] = mapped_column(Text)  # relative to FT_DATA_DIR
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    step: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Export(Base):
    """An asynchronous export of a job's adapter (kind "merged": adapter merged into the base model; kind "hub":
    the adapter or the merged model published to a Hugging Face Hub repo)."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("exp"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued, running, succeeded, failed
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set by the worker while it runs; app/inference/reaper.py fails a `running` export whose heartbeat went stale.
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Kind "hub": the target (repo_id, private, merged, revision) and, once published, {url, commit, commit_url}.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Evaluation(Base):
    """An on-demand base-vs-adapter evaluation of a job (POST /jobs/{id}/evaluations), run on a worker."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ev"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # The caller's dataset evaluated on; None: the job's validation dataset or held-out eval split. No foreign
    # key: deleting the dataset later keeps the evaluation's record.
    dataset_id: Mapped[str | None] = mapped_column(String(40))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)  # max_examples, include_base, max_new_tokens
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued, running, succeeded, failed
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # worker/training/evaluation.py's compare() record
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TenantSecret(Base):
    """A secret a tenant's work uses (webhook signing secret, Hub token, tracker credentials), set by an admin.

    `value` is Fernet-encrypted (`fernet:<token>`, app/tenants/secret_box.py: FT_SECRETS_KEY); rows from before
    encryption hold the clear value and are read as such until re-encrypted. `kind` is the secret's name.
    """

    __tablename__ = "tenant_secrets"
    __table_args__ = (UniqueConstraint("tenant", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

"""GET /usage: what a tenant holds and has used: storage by kind, GPU-hours, and its jobs by status."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import storage
from app.core.db import SessionDep
from app.models import Artifact, Dataset, Job, utcnow
from app.tenants.auth import CallerDep, listing_tenant

router = APIRouter(tags=["usage"])
ARTIFACT_KINDS = {"checkpoint": "checkpoints", "adapter": "adapters", "merged": "merged"}


class StorageUsage(BaseModel):
    datasets: int = Field(description="Bytes of stored datasets (the normalised rows the workers read).")
    checkpoints: int = Field(description="Bytes of packed checkpoints.")
    adapters: int
    merged: int = Field(description="Bytes of merged-model exports.")
    total: int


class UsagePublic(BaseModel):
    tenant: str = Field(description="Whose usage; `*` for every tenant (admin keys).")
    storage_bytes: StorageUsage
    datasets: int
    jobs: int
    jobs_by_status: dict[str, int]
    gpu_hours: float = Field(description="Wall-clock hours of jobs that ran on a GPU (one GPU each), last attempt.")
    cpu_hours: float = Field(description="The same for jobs that ran on CPU workers.")


def _hours(session: Session, tenant: str | None, now: datetime) -> dict[str, float]:
    """Hours per device from each started job's last attempt (started_at to finished_at, or now if running)."""
    query = select(Job.started_at, Job.finished_at, Job.lineage).where(Job.started_at.is_not(None))
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    hours = {"cuda": 0.0, "cpu": 0.0}
    for started, finished, lineage in session.execute(query):
        device = (lineage or {}).get("device", "cpu")
        end = finished or now
        seconds = max(0.0, (_aware(end) - _aware(started)).total_seconds())
        hours["cuda" if device == "cuda" else "cpu"] += seconds / 3600
    return hours


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)  # SQLite returns naive UTC


def usage(session: Session, tenant: str | None) -> UsagePublic:
    """A tenant's usage (every tenant's with `tenant=None`)."""
    datasets = select(Dataset.id)
    jobs = select(Job.status, func.count()).group_by(Job.status)
    artifacts = select(Artifact.kind, func.coalesce(func.sum(Artifact.size_bytes), 0)).join(Job).group_by(Artifact.kind)
    if tenant is not None:
        datasets, jobs = datasets.where(Dataset.tenant == tenant), jobs.where(Job.tenant == tenant)
        artifacts = artifacts.where(Job.tenant == tenant)
    dataset_ids = list(session.scalars(datasets))
    by_kind = {ARTIFACT_KINDS.get(kind, kind): int(size) for kind, size in session.execute(artifacts)}
    stored = {
        "datasets": sum(storage.store().size_of_prefix(storage.dataset_prefix(d)) for d in dataset_ids),
        **{name: by_kind.get(name, 0) for name in ARTIFACT_KINDS.values()},
    }
    by_status = {status: count for status, count in session.execute(jobs)}
    hours = _hours(session, tenant, utcnow())
    return UsagePublic(
        tenant=tenant or "*",
        storage_bytes=StorageUsage(**stored, total=sum(stored.values())),
        datasets=len(dataset_ids),
        jobs=sum(by_status.values()),
        jobs_by_status=by_status,
        gpu_hours=round(hours["cuda"], 4),
        cpu_hours=round(hours["cpu"], 4),
    )


@router.get("/usage", response_model=UsagePublic)
def get_usage(
    caller: CallerDep,
    session: SessionDep,
    tenant: Annotated[str | None, Query(max_length=200, description="Admin keys: another tenant, or `*`.")] = None,
) -> UsagePublic:
    """Storage per kind (datasets, checkpoints, adapters, merged exports), GPU-hours and jobs by status."""
    return usage(session, listing_tenant(caller, tenant))

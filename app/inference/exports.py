"""POST /jobs/{id}/exports: the adapter merged into its base model, as an asynchronous export on a worker.

When an export succeeds, GET /jobs/{id}/artifacts lists `merged` and GET /jobs/{id}/artifacts/merged downloads
it (a .tar.gz of a model directory that AutoModelForCausalLM loads). The worker side is worker/export.py.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import storage
from app.broker import calls as worker_calls
from app.broker.tasks import EXPORT_TASK
from app.core import http
from app.core.cursors import keyset_page
from app.core.db import SessionDep
from app.core.errors import Conflict, NotFound
from app.core.schemas import UtcDatetime
from app.jobs import service as jobs_service
from app.models import Export, Job
from app.spec.adapter import PROMPT_LEARNING
from app.spec.formats import StrictModel
from app.tenants import quotas, slots
from app.tenants.auth import CallerDep
from app.tenants.limits import LIMITED, inference_rate

router = APIRouter(prefix="/jobs", tags=["exports"])
MERGEABLE = {"lora", "dora", "rslora", "ia3"}


class ExportCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"kind": "merged"}]})

    kind: Literal["merged"] = Field("merged", description="`merged`: adapter merged into the (dequantized) base.")


class ExportPublic(BaseModel):
    id: str
    job_id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    error: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None = Field(None, description="When a worker began it (its heartbeat keeps it alive).")
    finished_at: UtcDatetime | None
    artifact_url: str | None = Field(None, description="Where the result downloads, once succeeded.")

    @classmethod
    def of(cls, export: Export) -> "ExportPublic":
        url = f"/jobs/{export.job_id}/artifacts/{export.kind}" if export.status == "succeeded" else None
        return cls(
            id=export.id,
            job_id=export.job_id,
            kind=export.kind,
            status=export.status,
            error=export.error_message,
            created_at=export.created_at,
            started_at=export.started_at,
            finished_at=export.finished_at,
            artifact_url=url,
        )


class ExportsPublic(BaseModel):
    data: list[ExportPublic]
    next_cursor: str | None = None


def create_export(session: Session, job: Job, kind: str) -> Export:
    """A queued export of a succeeded job's adapter (the caller commits, then sends it)."""
    if job.spec.get("task") == "classification":
        raise Conflict(f"job {job.id} is a classification job: its adapter is downloaded as is, not merged")
    method = (job.spec.get("adapter") or {}).get("method", "lora")
    if method in PROMPT_LEARNING:
        raise Conflict(
            f"job {job.id} trained a {method} adapter, a prompt-learning method: it learns virtual tokens put "
            "before every input, not changes to the base's weights, so there is nothing to merge. Serve it as an "
            f"adapter (GET /jobs/{job.id}/artifacts/adapter, PeftModel.from_pretrained), or train with "
            "adapter.method lora, dora, rslora or ia3 to get a mergeable one"
        )
    if method not in MERGEABLE:
        raise Conflict(f"a {method} adapter cannot be merged into the base; export works for lora, dora, rslora, ia3")
    if job.status != "succeeded":
        raise Conflict(f"job {job.id} is {job.status}: an export needs the adapter of a succeeded job")
    quotas.check_artifact_quota(session, job.tenant)  # the export is stored with the job's other artifacts
    slots.check_calls_in_flight(session, job.tenant)  # 429 when the tenant's worker calls are at its limit
    export = Export(job_id=job.id, kind=kind, status="queued")
    session.add(export)
    session.flush()
    return export


@router.post(
    "/{job_id}/exports",
    status_code=202,
    response_model=ExportPublic,
    dependencies=[inference_rate("exports")],
    responses=LIMITED,
)
def start_export(
    job_id: str, body: ExportCreate, caller: CallerDep, session: SessionDep, request: Request, response: Response
) -> ExportPublic:
    """Queue an export; poll `Location` (GET /jobs/{id}/exports/{export_id}) until `succeeded`, then download the
    artifact."""
    job = jobs_service.get_job(session, caller, job_id)
    export = create_export(session, job, body.kind)
    session.commit()  # on record before a worker can pick it up
    http.locate(request, response, "get_export", job_id=job.id, export_id=export.id)
    worker_calls.send_recorded(session, EXPORT_TASK, export, "export")
    return ExportPublic.of(export)


@router.get("/{job_id}/exports", response_model=ExportsPublic)
def list_exports(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000, description="Exports per page (oldest first).")] = 100,
    cursor: Annotated[str | None, Query(max_length=500, description="`next_cursor` of the previous page.")] = None,
) -> ExportsPublic:
    """The job's exports, oldest first, a page at a time (`next_cursor`, and `Link: rel="next"`)."""
    job = jobs_service.get_job(session, caller, job_id)
    query = select(Export).where(Export.job_id == job.id)
    rows, next_cursor = keyset_page(
        session, query, Export.created_at, Export.id, storage.SAFE_ID, limit, cursor, newest_first=False
    )
    http.link_next_page(request, response, next_cursor)
    return ExportsPublic(data=[ExportPublic.of(e) for e in rows], next_cursor=next_cursor)


@router.get("/{job_id}/exports/{export_id}", response_model=ExportPublic)
def get_export(job_id: str, export_id: str, caller: CallerDep, session: SessionDep) -> ExportPublic:
    job = jobs_service.get_job(session, caller, job_id)
    export = session.get(Export, export_id) if storage.SAFE_ID.fullmatch(export_id) else None
    if export is None or export.job_id != job.id:
        raise NotFound(f"job {job.id} has no export {export_id!r}; see GET /jobs/{job.id}/exports")
    return ExportPublic.of(export)

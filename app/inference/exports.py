"""POST /jobs/{id}/exports: the adapter merged into its base model, or published to the Hub, on a worker.

Kind `merged`: when it succeeds, GET /jobs/{id}/artifacts lists `merged` and GET /jobs/{id}/artifacts/merged
downloads it (a .tar.gz of a model directory that AutoModelForCausalLM loads). Kind `hub`: the adapter (or the
merged model) is committed to a Hugging Face Hub repo with the tenant's Hub token; the export record then names the
repo and the commit (docs/hub.md). The worker side is worker/export.py and worker/hub_publish.py.
"""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import storage
from app.broker import calls as worker_calls
from app.broker.tasks import EXPORT_TASK
from app.core import http
from app.core.cursors import keyset_page
from app.core.db import SessionDep
from app.core.errors import Conflict, Invalid, NotFound
from app.datasets.access import hub_repo_refusal
from app.inference.export_schemas import ExportCreate, ExportPublic, ExportsPublic
from app.jobs import service as jobs_service
from app.models import Export, Job
from app.spec.adapter import PROMPT_LEARNING
from app.tenants import quotas, slots
from app.tenants.auth import CallerDep
from app.tenants.limits import LIMITED, inference_rate
from app.tenants.secrets import HUB_TOKEN, get_secret

router = APIRouter(prefix="/jobs", tags=["exports"])
MERGEABLE = {"lora", "dora", "rslora", "ia3"}


def _check_mergeable(job: Job) -> None:
    """409 for an adapter that has nothing to merge into its base (classification heads, prompt learning)."""
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


def _check_hub_target(session: Session, job: Job, body: ExportCreate) -> None:
    """422 when the tenant has no Hub token to publish with, or may not use the repo (FT_HUB_ALLOW applies to
    writes as to reads: a tenant publishes only where it could load from)."""
    if get_secret(session, job.tenant, HUB_TOKEN) is None:
        raise Invalid(
            f"tenant {job.tenant!r} has no Hub token to publish with: an admin sets one with PUT "
            f"/admin/tenants/{job.tenant}/hub-token (a Hugging Face token with write access to {body.repo_id!r})"
        )
    if (refusal := hub_repo_refusal(job.tenant, body.repo_id or "", "repo_id")) is not None:
        raise Invalid(refusal)


def create_export(session: Session, job: Job, body: ExportCreate) -> Export:
    """A queued export of a succeeded job's adapter (the caller commits, then sends it)."""
    if body.kind == "merged" or body.merged:
        _check_mergeable(job)
    if body.kind == "hub":
        _check_hub_target(session, job, body)
    if job.status != "succeeded":
        raise Conflict(f"job {job.id} is {job.status}: an export needs the adapter of a succeeded job")
    if body.kind == "merged":
        quotas.check_artifact_quota(session, job.tenant)  # the export is stored with the job's other artifacts
    slots.check_calls_in_flight(session, job.tenant)  # 429 when the tenant's worker calls are at its limit
    export = Export(job_id=job.id, kind=body.kind, status="queued", options=body.hub_options())
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
    artifact (`merged`) or open the repo at `hub.url` (`hub`)."""
    job = jobs_service.get_job(session, caller, job_id)
    export = create_export(session, job, body)
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

"""Routes for /jobs: submit, list, get, cancel, delete, artifacts (metrics and events: app/observability/)."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from app import storage
from app.broker.queue import enqueue_training
from app.core import http
from app.core.db import SessionDep
from app.core.schemas import DeletedPublic
from app.jobs import retention
from app.jobs import service as jobs_service
from app.jobs.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    JobPublic,
    JobsPublic,
)
from app.jobs.webhooks import notify_job_finished
from app.models import Artifact, Job
from app.spec.job import JobSpec
from app.spec.lineage import clone_spec
from app.storage.downloads import stored_file_response
from app.tenants.auth import CallerDep, bearer_scheme, caller_of
from app.tenants.limits import LIMITED, SubmitRate

router = APIRouter(prefix="/jobs", tags=["jobs"])
Status = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]


def _public(session: Session, job: Job) -> JobPublic:
    return JobPublic.of(job, jobs_service.queue_position(session, job))


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    dependencies=[SubmitRate],
    responses=LIMITED,
)
def submit_job(
    spec: JobSpec,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Queue a job; `Location` is its URL. A retry with the same `Idempotency-Key` and body returns the same job
    (`Idempotent-Replayed: true`); the key reused with a different body is a 422."""
    job, created = jobs_service.create_job(session, caller, spec, idempotency_key)
    session.commit()  # the job is on record before any worker can hear of it
    http.locate(request, response, "get_job", job_id=job.id)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    elif enqueue_training(job.id):  # else the broker is down: the job stays queued and the reconciler sends it
        jobs_service.mark_enqueued(session, job)
    return _public(session, job)


@router.get("", response_model=JobsPublic, dependencies=[Security(bearer_scheme)])
async def list_jobs(
    request: Request,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    tenant: Annotated[str | None, Query(max_length=200, description="Admin keys: another tenant, or `*`.")] = None,
) -> Response:
    """Newest first; queued jobs carry their `queue_position`; `Link` names the next page."""
    body, next_cursor = await run_in_threadpool(_jobs_page, request, status, limit, cursor, tenant)
    return Response(body, media_type="application/json", headers=http.next_link(request, next_cursor))


@contextmanager
def _read_session(request: Request) -> Iterator[Session]:
    """A short session for a read that changes nothing. On PostgreSQL its connection is in autocommit: no BEGIN
    and ROLLBACK around the statements, three round trips instead of five, each ~0.1 ms of the API's CPU (measured:
    docs/operations.md, Throughput). SQLite's driver costs more to switch modes than its local transaction does."""
    with request.app.state.sessionmaker() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


def _jobs_page(
    request: Request, status: str | None, limit: int, cursor: str | None, tenant: str | None
) -> tuple[bytes, str | None]:
    with _read_session(request) as session:
        caller = caller_of(session, request)
        jobs, next_cursor = jobs_service.list_jobs(session, caller, status, limit, cursor, tenant)
        positions = jobs_service.queue_positions(session, jobs)
        page = JobsPublic(data=[JobPublic.of(j, positions.get(j.id)) for j in jobs], next_cursor=next_cursor)
    return page.model_dump_json().encode(), next_cursor  # pydantic's encoder: a third of the time of json.dumps


@router.get("/{job_id}", response_model=JobPublic, responses=http.NOT_MODIFIED, dependencies=[Security(bearer_scheme)])
async def get_job(job_id: str, request: Request) -> Response:
    """The job; with `If-None-Match` its last `ETag`, 304 while nothing in it has changed."""
    return http.conditional(request, await run_in_threadpool(_job_body, request, job_id))


def _job_body(request: Request, job_id: str) -> bytes:
    """The job as JSON, read in one worker-thread call: the key, the row and its queue position with one short
    session and plain rows (CallerDep and SessionDep cost three thread hops and FastAPI's dependency solving, the
    ORM's loading as much again: GET /jobs/{id} is what dashboards and clients poll; docs/operations.md, Throughput)."""
    with _read_session(request) as session:
        job = jobs_service.read_job(session, caller_of(session, request), job_id)
        public = JobPublic.of(job, jobs_service.queue_position(session, job))
    return public.model_dump_json().encode()  # pydantic's own encoder: a third of model_dump + json.dumps


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, caller: CallerDep, session: SessionDep) -> JobPublic:
    job = jobs_service.cancel_job(session, caller, job_id)
    session.commit()
    notify_job_finished(job.id, session)  # a queued job ends here, with no worker to send its webhook
    return JobPublic.of(job)


@router.delete("/{job_id}", response_model=DeletedPublic)
def delete_job(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    keep_metrics: Annotated[bool, Query(description="Keep the job's record and metrics; remove its files.")] = False,
) -> DeletedPublic:
    """Cancel the job if it has not ended, then remove its checkpoints and artifacts, and its record and metrics."""
    job, cancelled = jobs_service.delete_job(session, caller, job_id, keep_metrics)
    session.commit()
    freed = storage.remove(storage.job_prefix(job.id))
    if not keep_metrics:
        retention.forget_events(job.id)
    return DeletedPublic(id=job.id, object="job", cancelled=cancelled, kept_metrics=keep_metrics, freed_bytes=freed)


@router.post("/{job_id}/clone", status_code=201, response_model=JobPublic, dependencies=[SubmitRate], responses=LIMITED)
def clone_job(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    response: Response,
    overrides: Annotated[
        dict[str, Any] | None,
        Body(description="Spec fields to change, deep-merged.", examples=[{"training": {"seed": 7}}]),
    ] = None,
) -> JobPublic:
    """A new queued job with this job's spec and `overrides` deep-merged in (e.g. `{"training": {"seed": 7}}`)."""
    source = jobs_service.get_job(session, caller, job_id)
    job, _ = jobs_service.create_job(session, caller, clone_spec(source.spec, overrides or {}), None)
    session.commit()
    http.locate(request, response, "get_job", job_id=job.id)
    if enqueue_training(job.id):
        jobs_service.mark_enqueued(session, job)
    return _public(session, job)


PageLimit = Annotated[int, Query(ge=1, le=1000, description="Artifacts per page (oldest first).")]
PageCursor = Annotated[str | None, Query(max_length=500, description="`next_cursor` of the previous page.")]


def _artifacts(request: Request, job_id: str, page: tuple[list[Artifact], str | None]) -> Response:
    """The page with its `ETag` (304 when unchanged) and its `Link` to the next page."""
    artifacts, next_cursor = page
    body = ArtifactsPublic(
        data=[
            ArtifactPublic(
                name=a.name,
                kind=a.kind,
                size_bytes=a.size_bytes,
                sha256=a.sha256,
                step=a.step,
                created_at=a.created_at,
                download_url=str(request.url_for("download_artifact", job_id=job_id, name=a.name)),
            )
            for a in artifacts
        ],
        next_cursor=next_cursor,
    )
    return http.conditional_json(request, body, headers=http.next_link(request, next_cursor))


@router.get("/{job_id}/artifacts", response_model=ArtifactsPublic, responses=http.NOT_MODIFIED)
def list_artifacts(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    limit: PageLimit = 100,
    cursor: PageCursor = None,
) -> Response:
    """The job's adapter, packed checkpoints and exports, oldest first, a page at a time (`next_cursor`)."""
    job = jobs_service.get_job(session, caller, job_id)
    return _artifacts(request, job.id, jobs_service.artifacts_page(session, job, None, limit, cursor))


@router.get("/{job_id}/checkpoints", response_model=ArtifactsPublic, responses=http.NOT_MODIFIED)
def list_checkpoints(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    limit: PageLimit = 100,
    cursor: PageCursor = None,
) -> Response:
    """Packed checkpoint adapters, oldest first; each downloads as a .tar.gz like the adapter."""
    job = jobs_service.get_job(session, caller, job_id)
    return _artifacts(request, job.id, jobs_service.artifacts_page(session, job, "checkpoint", limit, cursor))


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=FileResponse,
    name="download_artifact",
    responses={200: {"content": {"application/gzip": {}}, "description": "The artifact as a .tar.gz."}},
)
def download_artifact(job_id: str, name: str, caller: CallerDep, session: SessionDep) -> Response:
    """The artifact's bytes, or with FT_S3_PRESIGN_DOWNLOADS a 307 to a presigned URL of the object store."""
    job = jobs_service.get_job(session, caller, job_id)
    artifact, key = jobs_service.artifact_file(session, job, name)
    return stored_file_response(
        key,
        media_type="application/gzip",
        filename=f"{job.id}-{artifact.name}.tar.gz",
        headers={"X-Content-SHA256": artifact.sha256},
    )

"""Routes under /v1 that speak OpenAI's fine-tuning API, so the `openai` SDK works with only `base_url` changed.

Same keys, tenants, datasets and jobs as the rest of the API; errors under /v1 come as OpenAI's
`{"error": {...}}` (see app/core/errors.py). docs/openai.md says how OpenAI's fields map onto a job spec.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response

from app import storage
from app.broker.queue import enqueue_training
from app.core.db import SessionDep
from app.jobs import service as jobs_service
from app.jobs.webhooks import notify_job_finished
from app.openai import events as openai_events
from app.openai import service as openai_service
from app.openai.schemas import (
    CheckpointObject,
    EventObject,
    FileObject,
    FineTuningJobCreate,
    FineTuningJobObject,
    ListObject,
)
from app.storage.downloads import stored_file_response
from app.tenants.auth import CallerDep
from app.tenants.limits import LIMITED, SubmitRate, UploadRate

router = APIRouter(prefix="/v1", tags=["openai"])
ROWS = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n'  # example
After = Annotated[str | None, Query(max_length=200, description="An id from the previous page: continue after it.")]


@router.post("/files", response_model=FileObject, dependencies=[UploadRate], responses=LIMITED)
def upload_file(
    caller: CallerDep,
    session: SessionDep,
    file: Annotated[
        UploadFile, File(description="JSONL: chat `{messages}` or `{prompt, completion}` lines", examples=[ROWS])
    ],
    purpose: Annotated[str, Form(description="Must be `fine-tune`.", examples=["fine-tune"])],
) -> FileObject:
    dataset = openai_service.upload_file(session, caller, file.file, file.filename, purpose)
    session.commit()  # before the response: a client's next request must find the file
    return openai_service.file_object(dataset)


@router.get("/files", response_model=ListObject[FileObject])
def list_files(
    caller: CallerDep,
    session: SessionDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> ListObject[FileObject]:
    return openai_service.list_files(session, caller, after, limit, order, purpose)


@router.get("/files/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, caller: CallerDep, session: SessionDep) -> FileObject:
    return openai_service.file_object(openai_service.get_file(session, caller, file_id))


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/jsonl": {}}, "description": "The rows, one JSON object a line."}},
)
def file_content(file_id: str, caller: CallerDep, session: SessionDep) -> Response:
    """The rows as stored: JSON Lines, whatever format was uploaded."""
    dataset = openai_service.get_file(session, caller, file_id)
    return stored_file_response(storage.relative(storage.dataset_rows_path(dataset.id)), media_type="application/jsonl")


@router.post("/fine_tuning/jobs", response_model=FineTuningJobObject, dependencies=[SubmitRate], responses=LIMITED)
def create_fine_tuning_job(
    body: FineTuningJobCreate,
    caller: CallerDep,
    session: SessionDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> FineTuningJobObject:
    job, created = openai_service.create_job(session, caller, body, idempotency_key)
    session.commit()  # the job is on record before any worker can hear of it
    if created and enqueue_training(job.id):
        jobs_service.mark_enqueued(session, job)
    return openai_service.job_read(session, job)


@router.get("/fine_tuning/jobs", response_model=ListObject[FineTuningJobObject])
def list_fine_tuning_jobs(
    caller: CallerDep,
    session: SessionDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> ListObject[FineTuningJobObject]:
    jobs, has_more = openai_service.list_jobs(session, caller, after, limit)
    return openai_service.job_list(session, jobs, has_more)


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJobObject)
def retrieve_fine_tuning_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJobObject:
    return openai_service.job_read(session, openai_service.get_job(session, caller, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJobObject)
def cancel_fine_tuning_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJobObject:
    job = openai_service.cancel_job(session, caller, job_id)
    session.commit()
    notify_job_finished(job.id, session)  # a queued job ends here, with no worker to send its webhook
    return openai_service.job_read(session, job)


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=ListObject[EventObject])
def list_fine_tuning_events(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> ListObject[EventObject]:
    job = openai_service.get_job(session, caller, job_id)
    return openai_events.list_events(session, job, after, limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", response_model=ListObject[CheckpointObject])
def list_fine_tuning_checkpoints(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListObject[CheckpointObject]:
    job = openai_service.get_job(session, caller, job_id)

    def download_url(name: str) -> str:
        return str(request.url_for("download_artifact", job_id=job.id, name=name))

    return openai_events.list_checkpoints(session, job, after, limit, download_url)

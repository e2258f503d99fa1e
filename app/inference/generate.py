"""POST /jobs/{id}/generate: the base model and the job's adapter answer the same prompts, side by side.

Generation runs on a worker (app/broker/calls.py); this process never loads a model. A few prompts are answered
synchronously (waiting up to FT_INFERENCE_TIMEOUT_S, without holding a thread); a longer batch, or one that
outlasts the wait, gets 202 and an id to poll at GET /jobs/{id}/generations/{generation_id}. Each call counts
against its tenant's FT_INFERENCE_RATE_PER_MINUTE and FT_MAX_CONCURRENT_CALLS (app/tenants/slots.py).
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session

from app.broker import calls as worker_calls
from app.broker.tasks import GENERATE_TASK
from app.core.config import settings
from app.core.db import SessionDep
from app.core.errors import Conflict, Invalid, NotFound
from app.jobs import service as jobs_service
from app.models import Job
from app.spec.formats import StrictModel
from app.tenants import slots
from app.tenants.auth import Caller, CallerDep
from app.tenants.limits import LIMITED, inference_rate

router = APIRouter(prefix="/jobs", tags=["generate"])
SYNC_MAX_PROMPTS = 8  # more prompts than this always run asynchronously
PromptText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class GenerateRequest(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompts": ["Write a haiku about the sea."], "max_new_tokens": 64}]}
    )

    prompts: list[PromptText | dict[str, PromptText]] = Field(
        min_length=1,
        max_length=64,
        description="Raw inputs, formatted as the job's training data: a string fills the prompt's one column "
        "(an object names several); chat jobs take a user message.",
    )
    max_new_tokens: int = Field(32, ge=1, le=1024, description="Tokens generated per prompt at most.")
    temperature: float = Field(0.0, ge=0, le=5, description="0: greedy (deterministic); above 0: sampling.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (with temperature > 0).")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Sampling seed; base and adapter use the same one.")


class GenerationResult(BaseModel):
    prompt: str | dict[str, str]
    formatted_prompt: str | None = None
    base: str
    adapter: str


class GenerationPublic(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    results: list[GenerationResult] | None = None
    error: dict[str, str] | None = None
    poll_url: str | None = None


def _generatable(job: Job) -> None:
    if job.spec.get("task") == "classification":
        raise Conflict(f"job {job.id} is a classification job: use POST /jobs/{job.id}/predict")
    if job.status != "succeeded":
        raise Conflict(f"job {job.id} is {job.status}: generation needs the adapter of a succeeded job")


def _public(request: Request, state: dict[str, Any]) -> GenerationPublic:
    url = str(request.url_for("get_generation", job_id=state["job_id"], generation_id=state["id"]))
    return GenerationPublic(
        id=state["id"],
        status=state["status"],
        results=state.get("results"),
        error=state.get("error"),
        poll_url=url,
    )


def _raise_failure(state: dict[str, Any]) -> None:
    error = state.get("error") or {}
    message = error.get("message", "generation failed on the worker")
    if error.get("type") in ("invalid_request", "invalid_spec", "dataset_error"):
        raise Invalid(f"prompts: {message}")
    raise worker_calls.WorkerFailed(message)


def _generatable_job(session: Session, caller: Caller, job_id: str) -> tuple[Job, int]:
    """The caller's succeeded generation job and its tenant's exports and evaluations in flight; then the session
    is closed, so no connection is held while a worker generates."""
    try:
        job = jobs_service.get_job(session, caller, job_id)
        _generatable(job)
        return job, slots.call_rows_in_flight(session, job.tenant)
    finally:
        session.close()


@router.post(
    "/{job_id}/generate",
    response_model=GenerationPublic,
    dependencies=[inference_rate("generate")],
    responses={
        202: {"model": GenerationPublic, "description": "Still running: poll `poll_url` (also `Location`)."},
        **LIMITED,
    },
)
async def generate(
    job_id: str,
    body: GenerateRequest,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    wait: Annotated[bool, Query(description=f"false: always 202 (also above {SYNC_MAX_PROMPTS} prompts).")] = True,
) -> Any:
    """`{"results": [{"prompt", "base", "adapter"}]}` when done within the wait; else 202 with an id to poll."""
    job, rows_in_flight = await run_in_threadpool(_generatable_job, session, caller, job_id)
    call_id = worker_calls.new_call_id()
    await slots.take_call_slot(job.tenant, call_id, rows_in_flight)  # 429 at the tenant's limit
    try:
        await worker_calls.start(GENERATE_TASK, call_id, job.id, job.tenant, body.model_dump(mode="json"))
    except worker_calls.WorkerUnavailable:
        await slots.release_call_slot(job.tenant, call_id)
        raise worker_calls.WorkerUnreachable("the task queue is unreachable; try again shortly") from None
    state = await worker_calls.read_async(call_id) or {}
    if wait and len(body.prompts) <= SYNC_MAX_PROMPTS:
        state = await worker_calls.wait(call_id, settings.inference_timeout_s) or state
    if state.get("status") == "failed":
        _raise_failure(state)
    public = _public(request, state)
    if public.status == "succeeded":
        return public
    return JSONResponse(public.model_dump(mode="json"), status_code=202, headers={"Location": public.poll_url or ""})


@router.get("/{job_id}/generations/{generation_id}", response_model=GenerationPublic, name="get_generation")
def get_generation(
    job_id: str, generation_id: str, caller: CallerDep, session: SessionDep, request: Request
) -> GenerationPublic:
    """An asynchronous generation: queued, running, succeeded (with results) or failed (with error); kept 1 hour."""
    job = jobs_service.get_job(session, caller, job_id)
    state = worker_calls.read(generation_id) if generation_id.startswith("gen_") else None
    if worker_calls.owned(state, job.id, job.tenant) is None:  # another tenant's call reads as an unknown one
        raise NotFound(f"job {job.id} has no generation {generation_id!r} (results are kept for an hour)")
    return _public(request, state)

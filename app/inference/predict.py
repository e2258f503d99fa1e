"""POST /jobs/{id}/predict: label texts with a classification job's adapter, on a worker (app/broker/calls.py).

The route waits for the worker's answer without holding a thread; each call counts against its tenant's
FT_INFERENCE_RATE_PER_MINUTE and FT_MAX_CONCURRENT_CALLS (app/tenants/slots.py).
"""

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session

from app.broker import calls as worker_calls
from app.broker.tasks import PREDICT_TASK
from app.core.config import settings
from app.core.db import SessionDep
from app.core.errors import Conflict, Invalid
from app.jobs import service as jobs_service
from app.models import Job
from app.spec.formats import StrictModel
from app.tenants import slots
from app.tenants.auth import Caller, CallerDep
from app.tenants.limits import LIMITED, inference_rate

router = APIRouter(prefix="/jobs", tags=["inference"])
MAX_TEXTS = 256
Text = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class PredictRequest(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": ["The battery died after two days.", "Works as described."]}]}
    )

    texts: list[Text] = Field(
        min_length=1,
        max_length=MAX_TEXTS,
        description="Texts to label. With a one-column template (`Review: {review}`) each text fills the column, "
        "as in training.",
    )


class Prediction(BaseModel):
    label: str = Field(description="The most likely label.")
    scores: dict[str, float] = Field(description="Every label's probability (they sum to 1).")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One per text, in order.")


def _prepare(session: Session, caller: Caller, job_id: str, texts: list[str]) -> tuple[Job, dict[str, Any], int]:
    """The job; what the worker is sent (the texts only: it reads the spec, the adapter and its checksum from SQL,
    worker/messages.py); and the tenant's exports and evaluations in flight. Then the session is closed: no
    connection held while a worker works."""
    try:
        job = jobs_service.get_job(session, caller, job_id)
        if job.spec.get("task") != "classification":
            raise Conflict(
                f"job {job.id} is not a classification job: predict needs task classification (try /generate)"
            )
        jobs_service.artifact_file(session, job, "adapter")  # 409 until the job has succeeded
        payload = {"texts": texts}
        return job, payload, slots.call_rows_in_flight(session, job.tenant)
    finally:
        session.close()


def _answer(state: dict[str, Any] | None) -> list[dict[str, Any]]:
    status = (state or {}).get("status")
    if status == "succeeded":
        return state["results"]
    if status == "failed":
        error = state.get("error") or {}
        message = error.get("message", "prediction failed on the worker")
        raise {"conflict": Conflict, "invalid_request": Invalid}.get(error.get("type"), worker_calls.WorkerFailed)(
            message
        )
    where = settings.inference_queue or settings.training_queue
    raise worker_calls.WorkerTimeout(
        f"no worker answered within {settings.inference_timeout_s:.0f}s (the request is {status or 'lost'}). "
        f"Is a worker serving queue {where!r}? With FT_INFERENCE_QUEUE unset, predictions wait behind running "
        "training jobs; a job's first prediction also loads its model. Retry, or see docs/operations.md."
    )


@router.post(
    "/{job_id}/predict",
    response_model=PredictResponse,
    dependencies=[inference_rate("predict")],
    responses={
        409: {"description": "Not a classification job, or no adapter yet"},
        504: {"description": "No worker answered in time"},
        **LIMITED,
    },
)
async def predict(job_id: str, body: PredictRequest, caller: CallerDep, session: SessionDep) -> PredictResponse:
    """Each text's label and class probabilities. Runs on a worker; a job's first call there loads its model."""
    job, payload, rows_in_flight = await run_in_threadpool(_prepare, session, caller, job_id, body.texts)
    call_id = worker_calls.new_call_id()
    await slots.take_call_slot(job.tenant, call_id, rows_in_flight)  # 429 at the tenant's limit
    try:
        await worker_calls.start(PREDICT_TASK, call_id, job.id, job.tenant, payload)
    except worker_calls.WorkerUnavailable:
        await slots.release_call_slot(job.tenant, call_id)
        raise worker_calls.WorkerUnreachable("the task queue is unreachable; try again shortly") from None
    predictions = _answer(await worker_calls.wait(call_id, settings.inference_timeout_s))
    return PredictResponse(predictions=[Prediction(**p) for p in predictions])

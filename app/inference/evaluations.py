"""POST /jobs/{id}/evaluations: base model vs adapter on the job's eval data or another dataset, on a worker.

Asynchronous: 202 with an id, then poll GET /jobs/{id}/evaluations/{evaluation_id}. Results (eval loss and
perplexity, and exact-match accuracy for label tasks, base vs adapter) are stored with the job and listed in
GET /jobs/{id}/metrics under `evaluations`. The checks are in evaluations_service.py; the worker side is
worker/inference.py (run_evaluation) with worker/training/evaluation.py.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.broker import calls as worker_calls
from app.broker.tasks import EVALUATE_TASK
from app.core import http
from app.core.db import SessionDep
from app.core.schemas import UtcDatetime
from app.inference import evaluations_service
from app.jobs import service as jobs_service
from app.models import Evaluation
from app.spec.formats import StrictModel
from app.tenants.auth import CallerDep
from app.tenants.limits import LIMITED, inference_rate

router = APIRouter(prefix="/jobs", tags=["evaluations"])


class EvaluationCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"max_examples": 100, "include_base": True}]})

    dataset: str | None = Field(
        None,
        description="One of your dataset ids, with the columns the job's format uses; default: the job's "
        "validation_dataset, else its held-out eval split (training.eval_fraction).",
    )
    max_examples: int = Field(200, ge=1, le=1000, description="Evaluate on the first this many rows.")
    include_base: bool = Field(True, description="Also measure the base model (the adapter disabled).")
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Tokens generated per row for label exact match (greedy); default: the longest label's + 2.",
    )


class SidePublic(BaseModel):
    eval_loss: float | None
    perplexity: float | None
    accuracy: float | None = Field(description="Exact match of the generated label; null unless a label task.")


class EvaluationResult(BaseModel):
    examples: int = Field(description="Rows evaluated.")
    label_examples: int = Field(description="Rows scored for exact match (0: not a label task).")
    base: SidePublic | None = Field(description="The base model; null with include_base false.")
    adapter: SidePublic


class EvaluationPublic(BaseModel):
    id: str
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    dataset: str | None = Field(description="The dataset evaluated on; null: the job's own eval data.")
    options: dict[str, Any]
    result: EvaluationResult | None
    error: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    poll_url: str

    @classmethod
    def of(cls, evaluation: Evaluation) -> "EvaluationPublic":
        return cls(
            id=evaluation.id,
            job_id=evaluation.job_id,
            status=evaluation.status,
            dataset=evaluation.dataset_id,
            options=evaluation.options,
            result=evaluation.result,
            error=evaluation.error_message,
            created_at=evaluation.created_at,
            started_at=evaluation.started_at,
            finished_at=evaluation.finished_at,
            poll_url=f"/jobs/{evaluation.job_id}/evaluations/{evaluation.id}",
        )


class EvaluationsPublic(BaseModel):
    data: list[EvaluationPublic]
    next_cursor: str | None = None


@router.post(
    "/{job_id}/evaluations",
    status_code=202,
    response_model=EvaluationPublic,
    dependencies=[inference_rate("evaluations")],
    responses=LIMITED,
)
def start_evaluation(
    job_id: str, body: EvaluationCreate, caller: CallerDep, session: SessionDep, request: Request, response: Response
) -> EvaluationPublic:
    """Queue an evaluation of a succeeded job; poll `poll_url` (also `Location`) until `succeeded` (with `result`)
    or `failed`."""
    job = jobs_service.get_job(session, caller, job_id)
    options = body.model_dump(exclude={"dataset"})
    evaluation = evaluations_service.create_evaluation(session, caller, job, body.dataset, options)
    session.commit()  # on record before a worker can pick it up
    http.locate(request, response, "get_evaluation", job_id=job.id, evaluation_id=evaluation.id)
    worker_calls.send_recorded(session, EVALUATE_TASK, evaluation, "evaluation")
    return EvaluationPublic.of(evaluation)


@router.get("/{job_id}/evaluations", response_model=EvaluationsPublic)
def list_evaluations(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000, description="Evaluations per page (oldest first).")] = 100,
    cursor: Annotated[str | None, Query(max_length=500, description="`next_cursor` of the previous page.")] = None,
) -> EvaluationsPublic:
    """The job's on-demand evaluations, oldest first, a page at a time (`next_cursor`, and `Link: rel="next"`)."""
    job = jobs_service.get_job(session, caller, job_id)
    rows, next_cursor = evaluations_service.evaluations_page(session, job, limit, cursor)
    http.link_next_page(request, response, next_cursor)
    return EvaluationsPublic(data=[EvaluationPublic.of(e) for e in rows], next_cursor=next_cursor)


@router.get("/{job_id}/evaluations/{evaluation_id}", response_model=EvaluationPublic)
def get_evaluation(job_id: str, evaluation_id: str, caller: CallerDep, session: SessionDep) -> EvaluationPublic:
    job = jobs_service.get_job(session, caller, job_id)
    return EvaluationPublic.of(evaluations_service.get_evaluation(session, job, evaluation_id))

"""GET /jobs/{id}/metrics: a job's loss curve so far, as JSON or a CSV results file."""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from app.core import http
from app.core.db import SessionDep
from app.inference import evaluations_service
from app.inference.evaluations import EvaluationPublic
from app.jobs import service as jobs_service
from app.observability import metrics_service
from app.tenants.auth import CallerDep

router = APIRouter(prefix="/jobs", tags=["metrics"])


class TrainPointPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int
    epoch: float | None
    loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_second: float | None
    num_tokens: int | None = None
    peak_memory_mb: float | None = None
    time: datetime


class EvalPointPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int
    epoch: float | None
    eval_loss: float | None
    time: datetime


class CurvePublic(BaseModel):
    job_id: str
    status: str
    train: list[TrainPointPublic]
    eval: list[EvalPointPublic]
    evaluation: dict[str, Any] | None = None  # base vs adapter: {examples, base: {eval_loss, ...}, adapter: {...}}
    evaluations: list[EvaluationPublic] = []  # on demand: POST /jobs/{id}/evaluations, oldest first


@router.get(
    "/{job_id}/metrics",
    response_model=CurvePublic,
    responses={
        200: {"content": {"text/csv": {}}, "headers": {"X-Last-Event-ID": {"schema": {"type": "string"}}}},
        **http.NOT_MODIFIED,
    },
)
def get_metrics(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    since_step: Annotated[
        int | None, Query(ge=0, le=2**31 - 1, description="Only points with step > since_step.")
    ] = None,
    max_points: Annotated[
        int | None, Query(ge=2, le=100_000, description="Downsample to at most this many points, keeping spikes.")
    ] = None,
    format: Annotated[Literal["json", "csv"], Query(description="`csv`: one results file, a row per point.")] = "json",
) -> Response:
    """The curve so far. `X-Last-Event-ID` says where GET /jobs/{id}/events continues from without a gap; with
    `If-None-Match` the last `ETag`, 304 while no point, status or evaluation has changed."""
    job = jobs_service.get_job(session, caller, job_id)
    newest_event = metrics_service.last_event_id(job.id)  # before the SQL read; see last_event_id
    train = metrics_service.curve(session, job, "train", since_step, max_points)
    evals = metrics_service.curve(session, job, "eval", since_step, max_points)
    headers = {"X-Last-Event-ID": newest_event} if newest_event else {}
    if format == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{job.id}-metrics.csv"'
        return http.conditional(request, metrics_service.to_csv(train, evals).encode(), "text/csv", headers)
    # Plain dicts straight to JSON: validating 100k points through pydantic would cost more than the query.
    body = {"job_id": job.id, "status": job.status, "train": train, "eval": evals, "evaluation": job.evaluation}
    body["evaluations"] = [
        EvaluationPublic.of(e).model_dump(mode="json") for e in evaluations_service.list_evaluations(session, job)
    ]
    return http.conditional_json(request, body, headers)

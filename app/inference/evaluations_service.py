"""On-demand evaluations of a job's adapter: checked and recorded here, run on a worker (worker/inference.py).

The worker measures base vs adapter with worker/training/evaluation.py, the code `training.evaluate_base` runs
after training.
No torch here: the API checks the request (job state, dataset ownership, the dataset fits the job's format) and
sends the task by name.
"""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import storage
from app.core.cursors import keyset_page
from app.core.errors import Conflict, Invalid, NotFound
from app.datasets import service as datasets_service
from app.models import Evaluation, Job
from app.spec import examples
from app.spec.job import JobSpec
from app.tenants import slots
from app.tenants.auth import Caller


def _evaluable(job: Job) -> JobSpec:
    spec = JobSpec.model_validate(job.spec)
    if spec.task == "classification":
        raise Conflict(
            f"job {job.id} is a classification job: its accuracy and f1 are measured during training "
            f"(GET /jobs/{job.id}/metrics); use POST /jobs/{job.id}/predict to try it on texts"
        )
    if job.status != "succeeded":
        raise Conflict(
            f"job {job.id} is {job.status}: an evaluation needs the adapter of a succeeded job; evaluate it once "
            f"GET /jobs/{job.id} says succeeded"
        )
    if job.artifacts_deleted_at is not None:
        raise Conflict(f"job {job.id}'s adapter was deleted (its record and metrics were kept): nothing to evaluate")
    return spec


def _check_dataset(session: Session, caller: Caller, spec: JobSpec, dataset_id: str, max_examples: int) -> None:
    """404 for a dataset that is not the caller's; 422 when its rows do not fit the job's format."""
    dataset = datasets_service.get_dataset(session, caller, dataset_id)
    rows = datasets_service.read_rows(dataset.id, limit=max_examples)
    built, errors = examples.build_examples(spec.format, rows)
    if errors or not built:
        problem = errors[0] if errors else "it has no rows"
        raise Invalid(
            f"dataset: {dataset.id} does not fit the job's format ({spec.format.type}): {problem}. Give a dataset "
            f"with the columns the job trained on ({', '.join(dataset.columns) or 'none'} found)"
        )


def create_evaluation(
    session: Session, caller: Caller, job: Job, dataset_id: str | None, options: dict[str, Any]
) -> Evaluation:
    """A queued evaluation (the caller commits, then sends it)."""
    spec = _evaluable(job)
    if dataset_id is not None:
        _check_dataset(session, caller, spec, dataset_id, options["max_examples"])
    elif spec.validation_dataset is None and spec.training.eval_fraction <= 0:
        raise Invalid(
            f"dataset: job {job.id} has no eval split (training.eval_fraction was 0) and no validation_dataset; "
            "give the id of one of your datasets in `dataset` (upload one with POST /datasets)"
        )
    slots.check_calls_in_flight(session, job.tenant)  # 429 when the tenant's worker calls are at its limit
    evaluation = Evaluation(job_id=job.id, dataset_id=dataset_id, options=options, status="queued")
    session.add(evaluation)
    session.flush()
    return evaluation


def list_evaluations(session: Session, job: Job, status: str | None = None) -> list[Evaluation]:
    query = select(Evaluation).where(Evaluation.job_id == job.id)
    if status is not None:
        query = query.where(Evaluation.status == status)
    return list(session.scalars(query.order_by(Evaluation.created_at, Evaluation.id)))


def evaluations_page(session: Session, job: Job, limit: int, cursor: str | None) -> tuple[list[Evaluation], str | None]:
    """`limit` of the job's evaluations, oldest first, after `cursor`; and the next page's cursor (None: the last)."""
    query = select(Evaluation).where(Evaluation.job_id == job.id)
    return keyset_page(
        session, query, Evaluation.created_at, Evaluation.id, storage.SAFE_ID, limit, cursor, newest_first=False
    )


def get_evaluation(session: Session, job: Job, evaluation_id: str) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id) if storage.SAFE_ID.fullmatch(evaluation_id) else None
    if evaluation is None or evaluation.job_id != job.id:
        raise NotFound(f"job {job.id} has no evaluation {evaluation_id!r}; see GET /jobs/{job.id}/evaluations")
    return evaluation

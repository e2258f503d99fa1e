"""The OpenAI-compatible API's work: files are our datasets and fine-tuning jobs our jobs, read back in OpenAI's shapes.

Ids are shared: a file id is a dataset id and a job id is a job id, so one job is visible at /jobs and
at /v1/fine_tuning/jobs alike.
"""

from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.errors import Invalid, NotFound
from app.datasets import service as datasets_service
from app.jobs import service as jobs_service
from app.models import Dataset, Job, MetricPoint, utcnow
from app.openai.schemas import (
    FileObject,
    FineTuningJobCreate,
    FineTuningJobObject,
    JobErrorObject,
    JobHyperparameters,
    ListObject,
)
from app.openai.spec import (
    REQUEST_FIELDS,
    base_learning_rate,
    build_spec,
    integrations_object,
    invalid,
    job_hyperparameters,
)
from app.serving.names import fine_tuned_model_name, split_fine_tuned
from app.spec.job import Training
from app.tenants.auth import Caller

# Our statuses in OpenAI's words. Validation is synchronous at creation, so there is no `validating_files`;
# a cancelling job is still running until its worker stops.
STATUS = {
    "queued": "queued",
    "running": "running",
    "cancelling": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
__all__ = ["fine_tuned_model_name"]  # app/openai/events.py and the tests read it from here


def unix(moment: datetime | None) -> int | None:
    """Seconds since the epoch; SQLite hands back naive datetimes, which are UTC here."""
    if moment is None:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


# --- files ---


def file_object(dataset: Dataset) -> FileObject:
    return FileObject(
        id=dataset.id,
        bytes=dataset.size_bytes,
        created_at=unix(dataset.created_at) or 0,
        filename=dataset.filename,
    )


def upload_file(session: Session, caller: Caller, upload: BinaryIO, filename: str | None, purpose: str) -> Dataset:
    """Store a `fine-tune` upload as a dataset (the same bytes again return the first one)."""
    if purpose != "fine-tune":
        raise invalid(f"purpose {purpose!r} is not supported here; upload with purpose=fine-tune", "purpose")
    dataset, _created = datasets_service.create_dataset(session, caller, upload, filename, None)
    return dataset


def get_file(session: Session, caller: Caller, file_id: str) -> Dataset:
    try:
        return datasets_service.get_dataset(session, caller, file_id, admin_may_read=True)
    except NotFound:
        raise NotFound(
            f"no such file: {file_id!r}; list yours with GET /v1/files", extra={"param": "file_id"}
        ) from None


def list_files(
    session: Session, caller: Caller, after: str | None, limit: int, order: str, purpose: str | None
) -> ListObject[FileObject]:
    """The caller's datasets, newest first unless order=asc; every one has purpose `fine-tune`."""
    anchor = get_file(session, caller, after) if after else None  # someone else's id is a 404, whatever else
    if purpose not in (None, "fine-tune"):
        return ListObject[FileObject].page([], False)
    newest_first = order == "desc"
    query = select(Dataset).where(Dataset.tenant == caller.tenant)
    if anchor is not None:
        position = tuple_(Dataset.created_at, Dataset.id)
        anchor_position = (anchor.created_at, anchor.id)
        query = query.where(position < anchor_position if newest_first else position > anchor_position)
    sort = (Dataset.created_at.desc(), Dataset.id.desc()) if newest_first else (Dataset.created_at, Dataset.id)
    rows = list(session.scalars(query.order_by(*sort).limit(limit + 1)))
    return ListObject[FileObject].page([file_object(d) for d in rows[:limit]], len(rows) > limit)


# --- fine-tuning jobs ---


def _file_columns(session: Session, caller: Caller, file_id: str, param: str) -> list[str]:
    try:
        return datasets_service.get_dataset(session, caller, file_id).columns
    except NotFound:
        raise invalid(f"invalid {param}: no file {file_id!r}; upload it with POST /v1/files", param) from None


def create_job(
    session: Session, caller: Caller, request: FineTuningJobCreate, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Map the request onto a job spec and record a queued job; returns (job, created). The route enqueues."""
    training_columns = _file_columns(session, caller, request.training_file, "training_file")
    validation_columns = None
    if request.validation_file is not None:
        validation_columns = _file_columns(session, caller, request.validation_file, "validation_file")
    parent = fine_tuned_parent(session, caller, request.model)
    spec = build_spec(request, training_columns, validation_columns, settings.openai_spec_defaults, parent)
    try:
        return jobs_service.create_job(session, caller, spec, idempotency_key)
    except Invalid as exc:  # the data checks name spec fields and rows; OpenAI's `param` names request fields
        exc.extra.setdefault("param", request_param(exc.extra.get("problems") or []))
        raise


def fine_tuned_parent(session: Session, caller: Caller, model: str) -> tuple[str, str, int | None] | None:
    """(base model, job id, checkpoint step) for a `fine_tuned_model` name (`ft:...:<job id>[:ckpt-step-N]`)."""
    if (parts := split_fine_tuned(model)) is None:
        return None
    model, job_id, step = parts
    try:
        job = jobs_service.get_job(session, caller, job_id)
    except NotFound:
        raise invalid(f"no fine-tuned model {model!r}: list yours with GET /v1/fine_tuning/jobs", "model") from None
    return job.spec["base_model"], job.id, step


def request_param(problems: list[dict[str, Any]]) -> str | None:
    """The request field behind the first problem the data checks found (a row belongs to its file)."""
    first = problems[0] if problems else {}
    if first.get("field"):
        return REQUEST_FIELDS.get(first["field"], first["field"])
    if first.get("row") is not None:
        return "validation_file" if str(first.get("message", "")).startswith("validation_dataset") else "training_file"
    return None


def get_job(session: Session, caller: Caller, job_id: str) -> Job:
    try:
        return jobs_service.get_job(session, caller, job_id)
    except NotFound:
        raise NotFound(
            f"no such fine-tuning job: {job_id!r}; list yours with GET /v1/fine_tuning/jobs",
            extra={"param": "fine_tuning_job_id"},
        ) from None


def list_jobs(session: Session, caller: Caller, after: str | None, limit: int) -> tuple[list[Job], bool]:
    """The caller's jobs, newest first, starting after the job `after`; returns (jobs, has_more)."""
    query = select(Job).where(Job.tenant == caller.tenant)
    if after:
        anchor = get_job(session, caller, after)
        query = query.where(tuple_(Job.created_at, Job.id) < (anchor.created_at, anchor.id))
    jobs = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return jobs[:limit], len(jobs) > limit


def cancel_job(session: Session, caller: Caller, job_id: str) -> Job:
    return jobs_service.cancel_job(session, caller, get_job(session, caller, job_id).id)


def trained_tokens(session: Session, jobs: list[Job]) -> dict[str, int]:
    """Tokens each finished job trained on: the last count its worker reported."""
    done = [j.id for j in jobs if j.status == "succeeded"]
    if not done:
        return {}
    query = (
        select(MetricPoint.job_id, func.max(MetricPoint.num_tokens))
        .where(MetricPoint.job_id.in_(done), MetricPoint.split == "train")
        .group_by(MetricPoint.job_id)
    )
    return {job_id: int(tokens) for job_id, tokens in session.execute(query) if tokens is not None}


def _file_ref(ref: Any) -> str | None:
    if ref is None or isinstance(ref, str):
        return ref
    return f"hub:{ref['hub']}@{ref.get('split', 'train')}"  # a /jobs job may train on a hub dataset


def _method_object(spec: dict[str, Any], hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The job's method as OpenAI shows it; other preference methods (kto, orpo, simpo) read as their own type."""
    method = spec.get("method") or {"type": "sft"}
    if method["type"] == "sft":
        return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    extra = {k: v for k, v in method.items() if k != "type"}
    return {"type": method["type"], method["type"]: {"hyperparameters": {**hyperparameters, **extra}}}


def job_object(job: Job, tokens: dict[str, int] | None = None) -> FineTuningJobObject:
    """Any job (made at /v1 or at /jobs) as OpenAI's `fine_tuning.job`."""
    spec = job.spec
    hyperparameters = job_hyperparameters(spec, base_learning_rate(settings.openai_spec_defaults))
    estimated = None
    if job.status == "running" and job.eta_seconds is not None:
        estimated = unix(utcnow() + timedelta(seconds=job.eta_seconds))
    error = None
    if job.status == "failed" and job.error_type:
        error = JobErrorObject(code=job.error_type, message=job.error_message or "")
    return FineTuningJobObject(
        id=job.id,
        created_at=unix(job.created_at) or 0,
        finished_at=unix(job.finished_at),
        estimated_finish=estimated,
        model=spec["base_model"],
        fine_tuned_model=fine_tuned_model_name(job) if job.status == "succeeded" else None,
        organization_id=job.tenant,
        status=STATUS[job.status],
        training_file=_file_ref(spec["dataset"]) or "",
        validation_file=_file_ref(spec.get("validation_dataset")),
        hyperparameters=JobHyperparameters(**hyperparameters),
        method=_method_object(spec, hyperparameters),
        seed=(spec.get("training") or {}).get("seed", Training.model_fields["seed"].default),
        trained_tokens=(tokens or {}).get(job.id),
        error=error,
        integrations=integrations_object(spec),
        metadata=spec.get("metadata"),
        user_provided_suffix=job.name,
    )


def job_read(session: Session, job: Job) -> FineTuningJobObject:
    return job_object(job, trained_tokens(session, [job]))


def job_list(session: Session, jobs: list[Job], has_more: bool) -> ListObject[FineTuningJobObject]:
    tokens = trained_tokens(session, jobs)
    return ListObject[FineTuningJobObject].page([job_object(j, tokens) for j in jobs], has_more)

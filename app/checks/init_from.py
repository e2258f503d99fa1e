"""`init_from`: the job a new one continues from must be the caller's, finished, and trained like it."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.checks.report import Problem, ValidationReport
from app.core.errors import Conflict
from app.models import Artifact, Job
from app.spec.job import JobSpec
from app.tenants.auth import Caller, can_see

FIELD = "init_from.job"


def init_artifact(session: Session, job_id: str, step: int | None) -> Artifact | None:
    """The adapter a job continues from: the parent's final adapter, or its checkpoint at `step`."""
    query = select(Artifact).where(Artifact.job_id == job_id)
    if step is None:
        query = query.where(Artifact.kind == "adapter")
    else:
        query = query.where(Artifact.kind == "checkpoint", Artifact.step == step)
    return session.scalars(query.order_by(Artifact.id.desc()).limit(1)).first()


def check_init_from(session: Session, caller: Caller, spec: JobSpec, report: ValidationReport) -> None:
    """Problems (422) for a parent that is not the caller's, has another base or adapter, or lacks the adapter.

    A parent still training is a Conflict (409): the same request succeeds once it has finished.
    """
    if spec.init_from is None:
        return
    ref = spec.init_from
    parent = session.get(Job, ref.job)
    if parent is None or not can_see(caller, parent.tenant):
        report.problems.append(Problem(field=FIELD, message=f"no job {ref.job!r} (init_from names one of your jobs)"))
        return
    parent_spec = JobSpec.model_validate(parent.spec)
    if parent_spec.base_model != spec.base_model:
        report.problems.append(
            Problem(
                field=FIELD,
                message=f"job {ref.job} trained {parent_spec.base_model!r}, not {spec.base_model!r}: "
                "an adapter continues only on the base it was trained on",
            )
        )
    if parent_spec.adapter.method != spec.adapter.method or parent_spec.task != spec.task:
        report.problems.append(
            Problem(
                field=FIELD,
                message=f"job {ref.job} trained a {parent_spec.task} {parent_spec.adapter.method} adapter, this spec "
                f"a {spec.task} {spec.adapter.method} one: set the same task and adapter.method",
            )
        )
    if init_artifact(session, ref.job, ref.checkpoint_step) is not None:
        return
    if ref.checkpoint_step is not None:
        steps = session.scalars(
            select(Artifact.step).where(Artifact.job_id == ref.job, Artifact.kind == "checkpoint")
        ).all()
        known = ", ".join(str(s) for s in sorted(s for s in steps if s is not None)) or "none"
        report.problems.append(
            Problem(
                field="init_from.checkpoint_step",
                message=f"job {ref.job} has no checkpoint at step {ref.checkpoint_step} (its checkpoints: {known})",
            )
        )
    elif parent.status in ("queued", "running", "cancelling"):
        raise Conflict(
            f"job {ref.job} is {parent.status}: its adapter exists once it has succeeded; submit again then, or "
            "name one of its checkpoints in init_from.checkpoint_step"
        )
    else:
        report.problems.append(Problem(field=FIELD, message=f"job {ref.job} is {parent.status} and has no adapter"))

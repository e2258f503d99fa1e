"""What a task message may carry, checked before anything acts on it: the worker does not trust Redis.

Anyone who can write to the broker can send any JSON task, so a message is only a pointer: ids of ours (`job_...`,
`gen_...`, `exp_...`, `ev_...`, a queued completion's `cmpl_...`), checked for shape before they reach SQL, Redis
or a path, plus the request data a caller typed (texts, prompts, sampling options), re-checked with the API's own
request models and bounds.
Everything else (a job's spec, its adapter's key and checksum, its tenant) is read from SQL by id. A call
(predict, generate) must also match the record the API wrote in Redis when it sent the task: same job, still
`queued`, and the job's tenant when the record names one. A message that fails those checks is logged and
dropped; nothing it names is read, written or deleted, its call record included (it may be someone else's).
"""

import logging
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from app import storage
from app.broker import calls
from app.core.db import session_scope
from app.models import Job
from app.spec.job import JobSpec
from worker.training.errors import TrainingError

log = logging.getLogger(__name__)
Request = TypeVar("Request", bound=BaseModel)


class Refused(Exception):
    """A message that does not check out: dropped unrun, and no record it names is touched."""


def refuse(what: str, exc: Refused) -> str:
    """Log a dropped message (someone wrote to the broker who should not have, or a stale one) -> 'refused'."""
    log.warning("refused a %s message: %s", what, exc)
    return "refused"


def checked_id(value: object, prefix: str) -> str:
    """`value` if it is one of our ids with this prefix (`job`, `gen`, `exp`, `ev`, `cmpl`); else Refused."""
    if not isinstance(value, str) or not storage.SAFE_ID.fullmatch(value) or not value.startswith(prefix + "_"):
        raise Refused(f"{str(value)[:100]!r} is not a {prefix}_<24 hex> id")
    return value


def check_call(call_id: object, job_id: object) -> None:
    """A predict/generate message must match its call's record: sent by the API, for this job, not yet run."""
    call_id, job_id = checked_id(call_id, "gen"), checked_id(job_id, "job")
    state = calls.read(call_id)
    if state is None:
        raise Refused(f"call {call_id} has no record (the API never sent it, or it expired)")
    if state.get("job_id") != job_id:
        raise Refused(f"call {call_id} is for job {state.get('job_id')!r}, not {job_id}")
    if state.get("status") != "queued":
        raise Refused(f"call {call_id} is {state.get('status')!r}: only a queued call is run, once")
    if "tenant" in state:
        with session_scope() as session:
            job = session.get(Job, job_id)
            tenant = job.tenant if job is not None else state["tenant"]  # deleted since: the call answers so
        if tenant != state["tenant"]:
            raise Refused(f"call {call_id} is tenant {state['tenant']!r}'s; job {job_id} is not")


def request_data(model: type[Request], data: object) -> Request:
    """The caller's request data re-checked with the API's model (same bounds); a 422-style error otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise TrainingError("invalid_request", first_error(exc)) from None


def first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def stored_spec(session: Session, job_id: str) -> tuple[Job, JobSpec]:
    """The job and its spec from SQL, re-validated (a stored spec that no longer validates is refused)."""
    job = session.get(Job, job_id)
    if job is None:
        raise TrainingError("conflict", f"job {job_id} was deleted")
    try:
        return job, JobSpec.model_validate(job.spec)
    except ValidationError as exc:
        message = f"job {job_id}'s stored spec no longer validates: {first_error(exc)}"
        raise TrainingError("invalid_spec", message) from None

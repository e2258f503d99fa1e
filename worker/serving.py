"""The embedded serving backend's worker side: the `finetune.serve` task drains the completion queue.

The API queues each completion (app/broker/serving.py) and sends `finetune.serve` as a wake-up. One run takes up
to FT_SERVING_MAX_BATCH requests at a time (round-robin across tenants) until the queue is empty, so extra
wake-ups find it empty and return at once. Each request is checked first, trusting nothing in Redis but the
caller's request data: its ids must be ours, its job is read from SQL (the record's tenant's, succeeded, a
causal LM with a LoRA-family adapter), its adapter or checkpoint from the job's Artifact row and checked against
the recorded sha256, its base model from the job's spec, and the tenant's allow-lists are checked again. A
refused request gets an `invalid_request` error entry and nothing is generated for it.

Checked requests are grouped by base model (the loaded one first) and batched by sampling settings
(worker/serving_generation.py); models stay loaded between runs (worker/serving_models.py), so start the
inference worker with `--pool solo` as for predictions.
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import storage
from app.broker import events
from app.broker.serving import ServingQueue
from app.checks.init_from import init_artifact
from app.core.config import settings
from app.core.db import session_scope
from app.core.errors import Invalid
from app.datasets import access as hub_access
from app.datasets.tenant_access import access_for
from app.models import Job
from app.spec.job import JobSpec
from worker import messages
from worker.inference import unpacked_adapter
from worker.serving_generation import Completion, batches, generate, prompt_ids
from worker.serving_models import ServingModels, adapter_name
from worker.training.errors import TrainingError

log = logging.getLogger(__name__)
MAX_CHOICES = 16  # `n`: rows of one request generated together, so it bounds one request's batch
MAX_STOPS = 4  # OpenAI's bound on `stop`
MAX_PROMPT_CHARS = 2_000_000  # tokenizing more than any context holds is work for nothing
SERVED_METHODS = ("lora", "rslora", "dora")  # PEFT multi-adapter serving is LoRA's; DoRA runs unmixed
models = ServingModels(settings.serving_max_adapters, settings.serving_adapter_memory_bytes)


class QueuedRequest(BaseModel):
    """The caller's request data in a queued record, re-checked with the API's bounds; the rest is ignored."""

    model_config = ConfigDict(extra="ignore")
    tenant: str = Field(min_length=1, max_length=200)
    base_model: str = Field(min_length=1, max_length=500)
    job_id: str | None = None
    checkpoint_step: int | None = Field(None, ge=0, strict=True)
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(ge=1, strict=True)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOPS)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, strict=True)
    n: int = Field(1, ge=1, le=MAX_CHOICES, strict=True)
    deadline: float

    @field_validator("max_tokens")
    @classmethod
    def _within_setting(cls, value: int) -> int:
        if value > settings.serving_max_tokens:
            raise ValueError(f"at most FT_SERVING_MAX_TOKENS ({settings.serving_max_tokens}), got {value}")
        return value

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value


@dataclass
class Checked:
    """A request that checked out: what to generate, with what (spec from SQL; adapter unpacked, checksum checked)."""

    completion: Completion
    spec: JobSpec
    tenant: str
    adapter_dir: Path | None = None


class Refused(Exception):
    """The request does not check out: answered with an `invalid_request` error, nothing generated."""


def run_serving() -> str:
    """Drain the queue: take, check, generate, answer, until it is empty; returns how many were taken."""
    queue = ServingQueue(events.redis_client())
    taken = 0
    while records := queue.take(settings.serving_max_batch):
        taken += len(records)
        serve(queue, records)
    return f"served {taken}"


def serve(queue: ServingQueue, records: list[dict[str, Any]]) -> None:
    """Check each record, then generate the ones that checked out, grouped by base model (the loaded one first)."""
    checked = [c for record in records if (c := _checked_or_answered(queue, record)) is not None]
    by_base: dict[str, list[Checked]] = {}
    for item in sorted(checked, key=lambda c: c.spec.base_model != models.base_model):
        by_base.setdefault(item.spec.base_model, []).append(item)
    for group in by_base.values():
        _serve_base(queue, group)


def _checked_or_answered(queue: ServingQueue, record: dict[str, Any]) -> Checked | None:
    call_id = record.get("id")
    try:
        messages.checked_id(call_id, "cmpl")
    except messages.Refused as exc:
        messages.refuse("completion", exc)  # not one of ours: nothing it names is written, its stream included
        return None
    try:
        with session_scope() as session:
            return check(session, call_id, record)
    except Refused as exc:
        _answer_error(queue, call_id, "invalid_request", str(exc))
    except Exception as exc:  # SQL or storage down: this request fails, the others still run
        log.exception("completion %s could not be checked", call_id)
        _answer_error(queue, call_id, "internal", f"the request could not be checked ({type(exc).__name__})")
    return None


def check(session: Session, call_id: str, record: dict[str, Any]) -> Checked:
    """The request as the worker will run it, from SQL and the checked request data; Refused, saying why."""
    try:
        data = QueuedRequest.model_validate(record)
    except ValidationError as exc:
        raise Refused(messages.first_error(exc)) from None
    if data.job_id is None:
        if data.checkpoint_step is not None:
            raise Refused("checkpoint_step names a checkpoint of a job, and no job was given")
        spec, adapter, adapter_dir = _base_spec(session, data.tenant, data.base_model), None, None
    else:
        spec, adapter, adapter_dir = _job_adapter(session, data)
    try:
        hub_access.check_base_model(access_for(session, data.tenant), spec.base_model)
    except Invalid as exc:
        raise Refused(exc.detail) from None
    completion = Completion(
        id=call_id,
        prompt=data.prompt,
        max_tokens=data.max_tokens,
        temperature=data.temperature,
        top_p=data.top_p,
        stop=data.stop,
        seed=data.seed,
        n=data.n,
        deadline=data.deadline,
        adapter=adapter,
        mixable=spec.adapter.method != "dora",  # PEFT cannot mix DoRA adapters in one batch
    )
    return Checked(completion, spec, data.tenant, adapter_dir)


def _job_adapter(session: Session, data: QueuedRequest) -> tuple[JobSpec, str, Path]:
    """The job's spec, its adapter's (or checkpoint's) PEFT name and unpacked directory, checksum checked."""
    try:
        job_id = messages.checked_id(data.job_id, "job")
    except messages.Refused as exc:
        raise Refused(str(exc)) from None
    job = session.get(Job, job_id)
    if job is None or job.tenant != data.tenant:
        raise Refused(f"tenant {data.tenant!r} has no job {job_id}")
    try:
        spec = messages.stored_spec(session, job_id)[1]
    except TrainingError as exc:
        raise Refused(exc.message) from None
    if job.status != "succeeded" or job.artifacts_deleted_at is not None:
        state = "deleted" if job.status == "succeeded" else job.status
        raise Refused(f"job {job_id} is {state}: only a succeeded job's model answers completions")
    if spec.task == "classification":
        raise Refused(f"job {job_id} is a classification job, not a chat model: use POST /jobs/{job_id}/predict")
    if spec.adapter.method not in SERVED_METHODS:
        raise Refused(
            f"job {job_id} trained a {spec.adapter.method} adapter; the embedded backend serves "
            f"{', '.join(SERVED_METHODS)}: use POST /jobs/{job_id}/generate"
        )
    if spec.base_model != data.base_model:
        raise Refused(f"job {job_id} trained {spec.base_model!r}, not {data.base_model!r}")
    artifact = init_artifact(session, job_id, data.checkpoint_step)
    if artifact is None:
        which = "an adapter" if data.checkpoint_step is None else f"a checkpoint at step {data.checkpoint_step}"
        raise Refused(f"job {job_id} has no {which} (deleted or expired)")
    try:
        directory = unpacked_adapter(job_id, storage.cached(artifact.path), artifact.sha256, "adapter_config.json")
    except (TrainingError, ValueError) as exc:
        raise Refused(getattr(exc, "message", str(exc))) from None
    return spec, adapter_name(job_id, artifact.sha256), directory


def _base_spec(session: Session, tenant: str, base_model: str) -> JobSpec:
    """The spec of a causal LM job of the tenant's on this base: a base is the tenant's to call only if one of its
    jobs used it, and the job's spec says how the base loads. A Hub model also needs a succeeded job: one that read
    it with the tenant's own Hub access, so a private model loaded for another tenant is not served to this one."""
    query = select(Job).where(Job.tenant == tenant, Job.spec["base_model"].as_string() == base_model)
    hub = hub_access.local_model_dir(base_model) is None
    for job in session.scalars(query.order_by((Job.status == "succeeded").desc(), Job.created_at.desc())):
        if hub and job.status != "succeeded":
            break
        try:
            spec = messages.stored_spec(session, job.id)[1]
        except TrainingError:
            continue
        if spec.task != "classification":
            return spec
    which = "succeeded causal LM" if hub else "causal LM"
    raise Refused(f"tenant {tenant!r} has no {which} job on base model {base_model!r} to serve it for")


def _serve_base(queue: ServingQueue, group: list[Checked]) -> None:
    """Load the group's base (as its first tenant, for the Hub), check prompt lengths, then run its batches."""
    try:
        with session_scope() as session:
            access = access_for(session, group[0].tenant)
        with hub_access.acting_for(access):
            model, tokenizer = models.base(group[0].spec)
    except Exception as exc:
        log.exception("serving: could not load base model %s", group[0].spec.base_model)
        message = exc.message if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {str(exc)[:300]}"
        for item in group:
            _answer_error(queue, item.completion.id, "internal", f"the base model did not load: {message}")
        return
    context = getattr(model.config, "max_position_embeddings", None) or math.inf
    ready, directories = [], {}
    for item in group:
        c = item.completion
        c.prompt_tokens = len(prompt_ids(tokenizer, c.prompt))
        if c.prompt_tokens == 0 or c.prompt_tokens + 1 > context:
            message = f"the prompt is {c.prompt_tokens} tokens; the model takes 1 to {context - 1}"
            _answer_error(queue, c.id, "invalid_request", message)
            continue
        c.max_tokens = min(c.max_tokens, int(context - c.prompt_tokens))
        if c.adapter is not None:
            directories[c.adapter] = item.adapter_dir
        ready.append(c)
    for batch in batches(ready, settings.serving_max_batch, models.max_adapters):
        _run_batch(queue, batch, {c.adapter: directories[c.adapter] for c in batch if c.adapter is not None})


def _run_batch(queue: ServingQueue, batch: list[Completion], adapters: dict[str, Path]) -> None:
    """Generate one batch; whatever fails, every request in it is answered."""
    answered: set[str] = set()

    def finish(call_id: str) -> None:
        answered.add(call_id)
        queue.finish(call_id)

    started = time.time()
    try:
        models.use(adapters)
        generate(models.model, models.tokenizer, batch, queue.publish, finish)
    except Exception as exc:
        log.exception("serving: generation failed for %s", [c.id for c in batch])
        message = f"generation failed ({type(exc).__name__}: {str(exc)[:300]}); see the worker log"
        for c in batch:
            if c.id not in answered:
                _answer_error(queue, c.id, "internal", message)
        return
    ids = ", ".join(c.id for c in batch)
    log.info("serving: %s in %.2fs, adapters %s", ids, time.time() - started, sorted(adapters) or "none")


def _answer_error(queue: ServingQueue, call_id: str, kind: str, message: str) -> None:
    log.warning("completion %s: %s: %s", call_id, kind, message)
    queue.publish(call_id, type="error", kind=kind, message=message)
    queue.finish(call_id)

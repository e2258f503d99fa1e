"""Serving's work in the API: which models a tenant may call, a name resolved to its base and adapter, the prompt
rendered as training rendered it, and the limits checked, before any backend hears of the request.

A tenant calls only its own: the base models its (non-classification) jobs used, still allowed by its allow-lists,
and its succeeded jobs' `fine_tuned_model` names (checkpoints too). Anything else, another tenant's job included,
is a 404 `model_not_found` that does not say whether the name exists. Admin keys are no exception: a completion
runs as the key's own tenant. Nothing from a request names a file: a job id is looked up in SQL, and the adapter's
storage key and checksum come from its Artifact row.
"""

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import storage
from app.checks.estimate import EstimateUnavailable, model_config
from app.checks.init_from import init_artifact
from app.checks.template_sandbox import TemplateRenderError, render_conversations
from app.checks.tokenization import ModelTokenizer, choose_chat_template, load_tokenizer
from app.core.config import settings
from app.core.errors import DomainError, Invalid, NotFound
from app.datasets.access import base_model_refusal, local_model_dir
from app.datasets.hub import HubUnavailable
from app.datasets.tenant_access import access_for
from app.models import Job
from app.serving.backend import AdapterRef, ServingRequest
from app.serving.names import fine_tuned_model_name, split_fine_tuned
from app.serving.schemas import ChatCompletionCreate, CompletionCreate, ModelList, ModelObject, SamplingRequest
from app.spec.formats import CONVERSATIONAL
from app.spec.job import JobSpec
from app.spec.templates import resolve_template
from app.tenants.auth import Caller

BASE_OWNER = "system"  # OpenAI's owner for models nobody here trained
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class ModelUnavailable(DomainError):
    """The model's tokenizer cannot be read right now (the Hub is unreachable): nothing was run."""

    status_code = 503


@dataclass(frozen=True)
class Served:
    """A model name resolved: the base that serves it, the job and spec behind it, and the adapter to apply."""

    name: str
    base_model: str
    spec: JobSpec | None
    adapter: AdapterRef | None


def _unix(moment: datetime | None) -> int:
    """Seconds since the epoch; SQLite hands back naive datetimes, which are UTC here."""
    if moment is None:
        return 0
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _chat_model(job: Job) -> bool:
    return job.spec.get("task", "causal_lm") != "classification"


def _servable(job: Job) -> bool:
    return job.status == "succeeded" and _chat_model(job) and job.artifacts_deleted_at is None


def _base_allowed(tenant: str, base_model: str) -> bool:
    return base_model_refusal(tenant, base_model, is_local=local_model_dir(base_model) is not None) is None


def _base_used(job: Job) -> bool:
    """The job makes its base callable by its tenant: a chat or text job on a local model, or on a Hub model one
    that succeeded (the Hub model was then read with the tenant's own access; worker/serving.py checks the same)."""
    base = job.spec["base_model"]
    return _chat_model(job) and (job.status == "succeeded" or local_model_dir(base) is not None)


def list_models(session: Session, caller: Caller) -> ModelList:
    """The caller's tenant's servable models: base models its jobs used (oldest use first), then fine-tuned ones."""
    jobs = list(session.scalars(select(Job).where(Job.tenant == caller.tenant).order_by(Job.created_at, Job.id)))
    bases: dict[str, ModelObject] = {}
    for job in jobs:
        base = job.spec["base_model"]
        if _base_used(job) and base not in bases and _base_allowed(caller.tenant, base):
            bases[base] = ModelObject(id=base, created=_unix(job.created_at), owned_by=BASE_OWNER)
    tuned = [
        ModelObject(id=fine_tuned_model_name(j), created=_unix(j.finished_at or j.created_at), owned_by=j.tenant)
        for j in jobs
        if _servable(j)
    ]
    return ModelList(data=[*bases.values(), *tuned])


def get_model(session: Session, caller: Caller, model: str) -> ModelObject:
    for found in list_models(session, caller).data:
        if found.id == model:
            return found
    raise not_found(model)


def not_found(model: str, why: str | None = None) -> NotFound:
    message = why or f"The model {model!r} does not exist or you do not have access to it; GET /v1/models lists yours"
    return NotFound(message, extra={"param": "model", "code": "model_not_found"})


def resolve(session: Session, caller: Caller, model: str) -> Served:
    """The base model and adapter behind a name the caller's tenant may call; 404 for any other name."""
    parts = split_fine_tuned(model)
    if parts is None:
        used = select(Job).where(Job.tenant == caller.tenant)
        if not any(_base_used(j) and j.spec["base_model"] == model for j in session.scalars(used)):
            raise not_found(model)
        if not _base_allowed(caller.tenant, model):
            raise not_found(model)
        return Served(model, model, None, None)
    name, job_id, step = parts
    job = session.get(Job, job_id) if job_id.startswith("job_") and storage.SAFE_ID.fullmatch(job_id) else None
    if job is None or job.tenant != caller.tenant or fine_tuned_model_name(job) != name:
        raise not_found(model)
    if not _chat_model(job):
        raise Invalid(
            f"{model!r} is a classification job, not a chat or text model: send its texts to "
            f"POST /jobs/{job.id}/predict for labels",
            extra={"param": "model"},
        )
    if job.status != "succeeded":
        raise not_found(model, f"job {job.id} is {job.status}: its model can be called once the job has succeeded")
    if job.artifacts_deleted_at is not None:
        raise not_found(model, f"job {job.id}'s adapter files were deleted, so its model can no longer be called")
    artifact = init_artifact(session, job.id, step)
    if artifact is None:
        where = f"GET /v1/fine_tuning/jobs/{job.id}/checkpoints lists its checkpoints"
        raise not_found(
            model, f"job {job.id} has no {'adapter' if step is None else f'checkpoint at step {step}'}; " + where
        )
    spec = JobSpec.model_validate(job.spec)
    return Served(model, spec.base_model, spec, AdapterRef(job.id, step, artifact.path, artifact.sha256))


def _tokenizer(session: Session, caller: Caller, base_model: str) -> ModelTokenizer:
    """The base model's tokenizer, read as the tenant (its allow-lists and Hub token); 400 when it may not."""
    try:
        return load_tokenizer(base_model, access_for(session, caller.tenant))
    except HubUnavailable as exc:
        raise ModelUnavailable(f"{base_model!r}: {exc}; try again shortly") from None
    except Invalid as exc:
        raise Invalid(exc.detail, extra={"param": "model"}) from None


def _context_length(session: Session, caller: Caller, base_model: str) -> int | None:
    """The model's context window from its config.json; None when the config does not say (the worker bounds it)."""
    try:
        config = model_config(base_model, access_for(session, caller.tenant))
    except EstimateUnavailable:
        return None
    return next((int(config[k]) for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)


def chat_template(served: Served, tok: ModelTokenizer) -> str:
    """The template the job trained with (its format.chat_template, else the model's, else the deployment's
    default, as app.checks.tokenization chose it at training); for a base model or a non-chat job, the model's own
    template, else FT_DEFAULT_CHAT_TEMPLATE. 400 when there is none."""
    template = None
    if served.spec is not None and isinstance(served.spec.format, CONVERSATIONAL):
        try:
            template = choose_chat_template(served.spec.format, served.base_model, tok.chat_template).template
        except ValueError as exc:
            raise Invalid(f"{served.name!r}: {exc}", extra={"param": "model"}) from None
    template = template or tok.chat_template or resolve_template(settings.default_chat_template)
    if not template:
        raise Invalid(
            f"{served.name!r} has no chat template, so messages cannot be laid out for it: send the text as it "
            "should be read to POST /v1/completions, or train with format.chat_template",
            extra={"param": "messages"},
        )
    return template


def render_messages(served: Served, tok: ModelTokenizer, body: ChatCompletionCreate) -> str:
    """The conversation as training rendered it, with the generation prompt; user templates run in the sandbox."""
    conversation = {
        "messages": [m.for_template() for m in body.messages],
        "tools": body.tools,
        "add_generation_prompt": True,
    }
    try:
        [(text, _spans)] = render_conversations(chat_template(served, tok), tok.special_tokens, [conversation])
    except TemplateRenderError as exc:
        message = f"the chat template could not render these messages: {exc.message}"
        raise Invalid(message, extra={"param": "messages"}) from None
    return text


def count_tokens(tok: ModelTokenizer, prompt: str) -> int:
    """Tokens the model reads, as the worker encodes the prompt: BOS added unless the prompt starts with it."""
    bos = tok.special_tokens.get("bos_token")
    return len(tok.tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos))).ids)


def max_tokens(asked: int | None, prompt_tokens: int, context: int | None, param: str) -> int:
    """The tokens to generate: as asked (at most FT_SERVING_MAX_TOKENS), else as many as fit, within the context."""
    limit = settings.serving_max_tokens
    if asked is not None and asked > limit:
        raise Invalid(
            f"max_tokens is {asked:,}, over this service's limit of {limit:,} (FT_SERVING_MAX_TOKENS): ask for fewer",
            extra={"param": "max_tokens"},
        )
    room = None if context is None else context - prompt_tokens
    tokens = asked if asked is not None else max(1, min(limit, room if room is not None else limit))
    if room is not None and tokens > room:
        raise Invalid(
            f"This model's maximum context length is {context:,} tokens. However, you requested "
            f"{prompt_tokens + tokens:,} tokens ({prompt_tokens:,} in the {param}, {tokens:,} in the completion). "
            f"Please reduce the length of the {param} or of max_tokens.",
            extra={"param": param, "code": "context_length_exceeded"},
        )
    return tokens


def _request(
    session: Session,
    caller: Caller,
    served: Served,
    body: SamplingRequest,
    prompt: str,
    param: str,
    tok: ModelTokenizer,
) -> ServingRequest:
    prompt_tokens = count_tokens(tok, prompt)
    context = _context_length(session, caller, served.base_model)
    now = time.time()
    return ServingRequest(
        id=f"cmpl_{secrets.token_hex(12)}",
        tenant=caller.tenant,
        model=served.name,
        base_model=served.base_model,
        adapter=served.adapter,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens(body.token_limit(), prompt_tokens, context, param),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stops(),
        seed=body.seed,
        n=body.n,
        deadline=now + settings.serving_timeout_s,
        created_at=now,
    )


def chat_request(session: Session, caller: Caller, body: ChatCompletionCreate) -> ServingRequest:
    """A chat completion as a backend takes it: the model resolved, the messages rendered, the limits checked."""
    served = resolve(session, caller, body.model)
    tok = _tokenizer(session, caller, served.base_model)
    return _request(session, caller, served, body, render_messages(served, tok, body), "messages", tok)


def completion_request(session: Session, caller: Caller, body: CompletionCreate) -> ServingRequest:
    """A text completion: the prompt as given, no template."""
    served = resolve(session, caller, body.model)
    tok = _tokenizer(session, caller, served.base_model)
    return _request(session, caller, served, body, body.text(), "prompt", tok)

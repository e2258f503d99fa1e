"""`init_from`: the adapter a new job continues from must be the caller's to use, finished, and trained like it.

Two sources: another job of the caller's (`{"job": ...}`), or a PEFT adapter repo on the Hugging Face Hub
(`{"hub": "owner/name"}`), read with the tenant's Hub token under its allow-lists as Hub datasets and models are.
A `base_model` that names a Hub adapter repo means its base, with that adapter continued: the spec is rewritten
to that here (`base_model`: the adapter's base, `init_from`: `{"hub": repo}`), so everything after, the worker
included, sees an ordinary base model and an ordinary `init_from`.
"""

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.checks.report import Problem, ValidationReport
from app.core.errors import Conflict, DomainError, Invalid
from app.datasets import hub
from app.datasets.access import HubAccess, base_model_refusal, check_hub_repo, local_model_dir
from app.datasets.tenant_access import access_for
from app.models import Artifact, Job
from app.spec.formats import HUB_ID
from app.spec.init_from import InitFrom, hub_adapter_mismatch
from app.spec.job import JobSpec
from app.tenants.auth import Caller, can_see

FIELD = "init_from.job"
ADAPTER_CONFIG = "adapter_config.json"


def init_artifact(session: Session, job_id: str, step: int | None) -> Artifact | None:
    """The adapter a job continues from: the parent's final adapter, or its checkpoint at `step`."""
    query = select(Artifact).where(Artifact.job_id == job_id)
    if step is None:
        query = query.where(Artifact.kind == "adapter")
    else:
        query = query.where(Artifact.kind == "checkpoint", Artifact.step == step)
    return session.scalars(query.order_by(Artifact.id.desc()).limit(1)).first()


def read_hub_adapter(repo: str, revision: str | None, access: HubAccess) -> tuple[hub.RepoListing, dict | None]:
    """The repo's listing and its adapter_config.json (None: the repo holds no PEFT adapter), read as the tenant."""
    listing = hub.list_repo(repo, "model", access, revision=revision)
    if ADAPTER_CONFIG not in listing.files:
        return listing, None
    root = hub.fetch(listing, [ADAPTER_CONFIG], access)
    try:
        config = json.loads((root / ADAPTER_CONFIG).read_text(encoding="utf-8")) if root else None
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise Invalid(f"{repo!r}: its {ADAPTER_CONFIG} is not a readable PEFT adapter config")
    return listing, config


def _problem(report: ValidationReport, field: str, message: str) -> None:
    report.problems.append(Problem(field=field, message=message))


def _expand_adapter_base(spec: JobSpec, tenant: str, access: HubAccess, report: ValidationReport) -> None:
    """A `base_model` naming a Hub adapter repo becomes that adapter's base, with `init_from: {hub}`.

    Mutates the spec (as app/fleet/prequantized.py does with `quantization`). Nothing happens for a local model, a
    repo that is not an adapter (no adapter_config.json, or a config.json of its own), or a Hub that cannot be
    read now: the tokenizer check reports those.
    """
    repo = spec.base_model
    if local_model_dir(repo) is not None or any(p.field == "base_model" for p in report.problems):
        return
    try:
        listing, config = read_hub_adapter(repo, None, access)
    except (DomainError, hub.HubUnavailable):
        return
    if config is None or "config.json" in listing.files:
        return
    base = str(config.get("base_model_name_or_path") or "")
    if spec.init_from is not None:
        message = "the job already continues it: drop init_from, or set base_model to the adapter's base"
        _problem(report, "init_from", f"base_model {repo!r} is a Hub adapter, so {message}")
    elif spec.task == "classification":
        _problem(report, "base_model", f"{repo!r} is a Hub adapter; only causal_lm jobs continue one")
    elif not HUB_ID.fullmatch(base) or ".." in base:
        fix = f'set base_model to its base and init_from to {{"hub": "{repo}"}}'
        message = f"its base_model_name_or_path {base!r} is not a Hub id or a model in FT_MODELS_DIR: {fix}"
        _problem(report, "base_model", f"{repo!r} is a PEFT adapter, and {message}")
    elif (refusal := base_model_refusal(tenant, base, is_local=local_model_dir(base) is not None)) is not None:
        _problem(report, "base_model", f"{repo!r} is an adapter for {base!r}: {refusal}")
    else:
        spec.base_model, spec.init_from = base, InitFrom(hub=repo)


def _check_hub_init(spec: JobSpec, access: HubAccess, report: ValidationReport) -> None:
    """The Hub adapter exists for the tenant, and was trained on this base with this method."""
    ref = spec.init_from
    assert ref is not None and ref.hub is not None
    if spec.task == "classification":
        _problem(report, "init_from.hub", "init_from.hub continues causal-LM adapters; classification jobs start fresh")
        return
    try:
        check_hub_repo(access, ref.hub, "init_from.hub")
        _listing, config = read_hub_adapter(ref.hub, ref.revision, access)
    except hub.HubUnavailable as exc:
        report.warnings.append(f"init_from.hub: {exc}; the worker checks the adapter when the job starts")
        return
    except DomainError as exc:
        _problem(report, "init_from.hub", exc.detail)
        return
    if config is None:
        _problem(report, "init_from.hub", f"{ref.hub!r} holds no PEFT adapter ({ADAPTER_CONFIG} is missing)")
    elif (mismatch := hub_adapter_mismatch(ref.hub, config, spec.base_model, spec.adapter.method)) is not None:
        _problem(report, "init_from.hub", mismatch)


def check_init_from(session: Session, caller: Caller, spec: JobSpec, report: ValidationReport) -> None:
    """Problems (422) for a parent that is not the caller's, has another base or adapter, or lacks the adapter.

    A parent still training is a Conflict (409): the same request succeeds once it has finished. A base_model that
    is a Hub adapter repo is first rewritten to its base with `init_from: {hub}` (see the module's docstring).
    """
    access: HubAccess = access_for(session, caller.tenant)
    _expand_adapter_base(spec, caller.tenant, access, report)
    if spec.init_from is None:
        return
    if spec.init_from.hub is not None:
        _check_hub_init(spec, access, report)
        return
    _check_parent_job(session, caller, spec, report)


def _check_parent_job(session: Session, caller: Caller, spec: JobSpec, report: ValidationReport) -> None:
    ref = spec.init_from
    assert ref is not None and ref.job is not None
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

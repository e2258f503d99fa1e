"""Gather what a spec's checks need (the caller's datasets, hub data, the base model's tokenizer), then check."""

import json
from pathlib import Path

from sqlalchemy.orm import Session

from app.checks import estimate as estimate_service
from app.checks.classification import check_classification
from app.checks.data import DataSource, Problem, ValidationReport, check_data
from app.checks.init_from import check_init_from
from app.checks.integrations import check_integrations
from app.checks.tokenization import ModelTokenizer, load_tokenizer
from app.core.config import settings
from app.core.errors import DomainError, Invalid, NotFound
from app.datasets import access as hub_access
from app.datasets import hub as hub_files
from app.datasets.service import get_dataset, read_rows
from app.datasets.tenant_access import access_for
from app.fleet.prequantized import check_prequantized_base
from app.fleet.routing import fleet_refusal
from app.spec.formats import HubDataset
from app.spec.job import JobSpec
from app.tenants import limits as tenant_limits
from app.tenants import quotas as tenant_quotas
from app.tenants.auth import Caller


def _model_dir_problem(base_model: str, local: Path) -> str | None:
    """Why a directory in FT_MODELS_DIR cannot be trained on here, or None: the worker's rules, checked early."""
    if not local.resolve().is_relative_to(settings.resolved_models_dir):
        return f"{base_model!r} in FT_MODELS_DIR links outside it; only directories inside it are used"
    if not (local / "config.json").is_file():
        return f"{base_model!r} in FT_MODELS_DIR has no config.json"
    for name in ("config.json", "tokenizer_config.json"):
        try:
            config = json.loads((local / name).read_text(encoding="utf-8")) if (local / name).is_file() else {}
        except (ValueError, OSError):
            return f"{base_model!r}: its {name} is not readable JSON"
        if isinstance(config, dict) and config.get("auto_map"):
            return (
                f"{base_model!r} needs custom code ({name} has auto_map), and remote or custom code is never run "
                "here; use a model whose architecture transformers ships"
            )
    if not any(local.glob("*.safetensors")):
        return f"{base_model!r} has no .safetensors weights (pickled weights are never loaded)"
    return None


def _check_base_model(base_model: str, tenant: str, report: ValidationReport) -> None:
    """The tenant's allow-lists, then (a directory in FT_MODELS_DIR) the worker's rules; a Hub id's tokenizer is
    fetched below, and the worker names a model it cannot load."""
    local = settings.resolved_models_dir / base_model
    problem = hub_access.base_model_refusal(tenant, base_model, is_local=local.is_dir())
    if problem is None and local.is_dir():
        problem = _model_dir_problem(base_model, local)
    if problem:
        report.problems.append(Problem(field="base_model", message=problem))


def _hub_source(field: str, ref: HubDataset, access: hub_access.HubAccess, report: ValidationReport) -> DataSource:
    """A Hub dataset's split: listed (and held to the tenant's limits) first, read here only when it is small
    enough for the API host; a larger one is downloaded and its rows checked by the worker when the job starts."""
    label = f"{ref.hub!r} (split {ref.split!r})"
    try:
        split = hub_files.list_hub_split(ref, access)
        if split.size > settings.hub_max_api_host_bytes:
            report.warnings.append(
                f"{field}: {label} is {split.size:,} bytes, over FT_HUB_MAX_API_HOST_BYTES "
                f"({settings.hub_max_api_host_bytes:,}), so it is not downloaded here: its {len(split.paths)} files "
                "exist and are within this tenant's size limit, and their rows are checked when the job starts"
            )
            return DataSource(field, label, None)
        parsed = hub_files.read_hub_split(split, access)
    except hub_files.HubUnavailable as exc:
        report.warnings.append(f"{field}: {exc}; its rows are checked on the worker instead")
        return DataSource(field, label, None)
    except DomainError as exc:
        report.problems.append(Problem(field=field, message=exc.detail))
        return DataSource(field, label, None)
    return DataSource(field, label, parsed.rows, parsed.columns)


def _source(
    session: Session,
    caller: Caller,
    field: str,
    ref: str | HubDataset,
    report: ValidationReport,
    access: hub_access.HubAccess,
) -> DataSource:
    if isinstance(ref, HubDataset):
        return _hub_source(field, ref, access, report)
    try:
        dataset = get_dataset(session, caller, ref)
    except NotFound as exc:
        report.problems.append(Problem(field=field, message=exc.detail))
        return DataSource(field, ref, None)
    return DataSource(field, dataset.id, read_rows(dataset.id), list(dataset.columns))


def _tokenizer_loader(base_model: str, access: hub_access.HubAccess, report: ValidationReport):  # noqa: ANN202
    def load() -> ModelTokenizer | None:
        if any(p.field == "base_model" for p in report.problems):
            return None  # a model the tenant may not use (or cannot be trained on): nothing of it is fetched
        try:
            return load_tokenizer(base_model, access)
        except hub_files.HubUnavailable as exc:
            report.warnings.append(f"base_model: {exc}; token lengths, truncation and masks were not checked")
        except Invalid as exc:
            report.problems.append(Problem(field="base_model", message=exc.detail))
        except Exception as exc:  # a tokenizer.json that `tokenizers` cannot read
            report.warnings.append(f"base_model: its tokenizer could not be read here ({type(exc).__name__}: {exc})")
        return None

    return load


def check_job_spec(session: Session, caller: Caller, spec: JobSpec) -> ValidationReport:
    """Every check POST /jobs runs, as a report (nothing is queued)."""
    report = estimate_service.EstimatedReport(ok=False)
    access = access_for(session, caller.tenant)  # the tenant's allow-lists and Hub token, never HF_TOKEN
    _check_base_model(spec.base_model, caller.tenant, report)
    check_init_from(session, caller, spec, report)
    check_integrations(session, caller.tenant, spec, report)  # each tracker has the tenant's secrets it needs
    train = _source(session, caller, "dataset", spec.dataset, report, access)
    evals = None
    if spec.validation_dataset is not None:
        evals = _source(session, caller, "validation_dataset", spec.validation_dataset, report, access)
    check = check_classification if spec.task == "classification" else check_data
    check(spec, train, evals, _tokenizer_loader(spec.base_model, access, report), report)
    if not any(p.field == "base_model" for p in report.problems):
        estimate_service.add_estimate(spec, report, access)  # memory, time, GPU-hours; refuses a job that fits no GPU
    return check_spec_bounds(spec, caller.tenant, report)


def enforce(report: ValidationReport) -> None:
    """Refuse a spec whose checks found problems: 422 naming the field, column or row, with the full list."""
    if not report.ok:
        extra: dict = {"problems": [p.model_dump(exclude_none=True) for p in report.problems]}
        if (estimate := estimate_service.stored_estimate(report)) is not None:
            extra["estimate"] = estimate  # the numbers behind a job that fits no GPU
        raise Invalid(report.summary(), extra=extra)


def validate_submission(session: Session, caller: Caller, spec: JobSpec) -> ValidationReport:
    """The checks of POST /jobs/validate (data, columns, rows, tokenizer, lengths, fit); 422 on any problem.

    A GPTQ/AWQ base is checked first: a second quantization is refused, a default one becomes null.
    """
    check_fleet_fits(spec)
    check_prequantized_base(spec, estimate_service.config_reader(access_for(session, caller.tenant)))
    report = check_job_spec(session, caller, spec)
    enforce(report)
    return report


def check_fleet_fits(spec: JobSpec) -> None:
    """422 for a job no machine of the declared fleet could ever run (too many GPUs, too much GPU memory)."""
    if (refusal := fleet_refusal(spec.resources)) is not None:
        field, message = refusal
        raise Invalid(message, extra={"problems": [{"field": field, "message": message}]})


def _num(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def check_spec_bounds(spec: JobSpec, tenant: str, report: ValidationReport) -> ValidationReport:
    """Add a problem for every spec value over the tenant's bounds (POST /jobs refuses them with 422)."""
    limits = tenant_limits.limits_for(tenant)
    t = spec.training
    found: list[Problem] = []

    def over(field: str, value: float, name: str, hint: str) -> None:
        allowed = getattr(limits, name)
        if value > allowed:
            message = (
                f"{_num(value)} is over this tenant's limit of {_num(allowed)} ({name}, {limits.source(name)}); {hint}"
            )
            found.append(Problem(field=field, message=message))

    if t.max_steps is not None:
        over("training.max_steps", t.max_steps, "max_training_steps", "lower it")
    else:
        over("training.epochs", t.epochs, "max_epochs", "lower it, or set training.max_steps")
        steps = report.total_steps
        if steps is not None and steps > limits.max_training_steps and t.epochs <= limits.max_epochs:
            message = (
                f"{t.epochs:g} epochs would run {steps:,} steps, over this tenant's limit of "
                f"{limits.max_training_steps:,} (max_training_steps); lower epochs or set training.max_steps"
            )
            found.append(Problem(field="training.epochs", message=message))
    over("training.max_seq_length", t.max_seq_length, "max_seq_length", "lower it")
    over("lora.r", spec.lora.r, "max_lora_rank", "lower it")
    found += [Problem(field=f, message=m) for f, m in tenant_quotas.bound_problems(spec, limits, report.total_steps)]
    report.problems.extend(found)
    report.ok = not report.problems
    return report

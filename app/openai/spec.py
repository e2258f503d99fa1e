"""How an OpenAI fine-tuning request becomes our job spec, and how any job spec reads back as OpenAI hyperparameters.

Layers, each over the one before: the deployment's FT_OPENAI_SPEC_DEFAULTS, the OpenAI fields (model, files,
hyperparameters, seed, suffix, metadata), `ft.`-prefixed metadata keys, then the `spec_overrides` extension.
"""

import json
from typing import Any

from pydantic import ValidationError

from app.core.errors import Invalid, validation_detail
from app.openai.schemas import FineTuningJobCreate, Hyperparameters
from app.spec.job import JobSpec, Training

METADATA_PREFIX = "ft."
# Spec fields that come from the request's own fields; an override would make the job lie about them.
REQUEST_FIELDS = {"base_model": "model", "dataset": "training_file", "validation_dataset": "validation_file"}
EXPECTED_SHAPES = (
    'chat lines `{"messages": [...]}`, prompt/completion lines `{"prompt": ..., "completion": ...}` or, for DPO, '
    '`{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`'
)


def invalid(message: str, param: str | None) -> Invalid:
    """A 400 under /v1 (422 elsewhere) naming the request field at fault, as OpenAI's `param`."""
    return Invalid(message, extra={"param": param})


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`: nested objects merge key by key, anything else (null too) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _metadata_value(raw: str) -> Any:
    # Metadata values are strings; "8", "null", "true", "[\"q_proj\"]" mean the JSON they spell.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def metadata_overrides(metadata: dict[str, str] | None) -> dict[str, Any]:
    """`ft.`-prefixed metadata keys as a partial spec: `{"ft.lora.r": "8"}` -> `{"lora": {"r": 8}}`."""
    overrides: dict[str, Any] = {}
    for key, raw in (metadata or {}).items():
        if not key.startswith(METADATA_PREFIX):
            continue
        path = key[len(METADATA_PREFIX) :].split(".")
        if not all(path):
            raise invalid(f"metadata key {key!r} must name a job spec field, like `ft.lora.r`", f"metadata.{key}")
        nested: Any = _metadata_value(raw)
        for part in reversed(path):
            nested = {part: nested}
        overrides = deep_merge(overrides, nested)
    return overrides


def detect_format(columns: list[str], file_id: str, param: str) -> dict[str, Any]:
    """OpenAI's two supervised shapes, chat (`messages`) and prompt/completion, and its DPO shape."""
    if "preferred_output" in columns or ("chosen" in columns and "rejected" in columns):
        return {"type": "preference"}
    if "messages" in columns:
        return {"type": "chat", "field": "messages"}
    if "prompt" in columns and "completion" in columns:
        return {"type": "prompt_completion", "prompt": "{prompt}", "completion": "{completion}"}
    raise invalid(
        f"{param} {file_id} has the columns {', '.join(columns)}; expected {EXPECTED_SHAPES} "
        "(or set `format` in spec_overrides)",
        param,
    )


def requested_hyperparameters(request: FineTuningJobCreate) -> Hyperparameters:
    """`method.supervised.hyperparameters` over the deprecated top-level `hyperparameters`, field by field."""
    method = request.method
    if method is not None and method.type == "reinforcement":
        raise invalid("method.type 'reinforcement' is not supported here; use `supervised` or `dpo`", "method.type")
    legacy = request.hyperparameters or Hyperparameters()
    if method is not None and method.type == "dpo":
        current: Hyperparameters | None = method.dpo.hyperparameters if method.dpo else None
    else:
        current = method.supervised.hyperparameters if method and method.supervised else None
    if current is None:
        return legacy
    return legacy.model_copy(update=current.model_dump(exclude_unset=True))


def base_learning_rate(defaults: dict[str, Any]) -> float:
    """The learning rate a `learning_rate_multiplier` of 1 means: the deployment's default training.learning_rate."""
    configured = (defaults.get("training") or {}).get("learning_rate")
    return float(configured) if configured else Training.model_fields["learning_rate"].default


def _training_fields(request: FineTuningJobCreate, base_lr: float) -> dict[str, Any]:
    hp = requested_hyperparameters(request)
    training: dict[str, Any] = {}
    if hp.n_epochs != "auto":
        training["epochs"] = hp.n_epochs
    if hp.batch_size != "auto":
        training["batch_size"] = hp.batch_size
    if hp.learning_rate_multiplier != "auto":
        training["learning_rate"] = base_lr * hp.learning_rate_multiplier
    if request.seed is not None:
        training["seed"] = request.seed
    return training


def _overrides(request: FineTuningJobCreate) -> dict[str, Any]:
    overrides = deep_merge(metadata_overrides(request.metadata), request.spec_overrides or {})
    for name, field in REQUEST_FIELDS.items():
        if name in overrides:
            raise invalid(f"{name} cannot be overridden: set `{field}` instead", f"spec_overrides.{name}")
    return overrides


def _files_format(
    request: FineTuningJobCreate, training_columns: list[str], validation_columns: list[str] | None
) -> dict[str, Any]:
    shape = detect_format(training_columns, request.training_file, "training_file")
    dpo = request.method is not None and request.method.type == "dpo"
    if dpo != (shape["type"] == "preference"):
        wanted = "DPO lines `{input, preferred_output, non_preferred_output}`" if dpo else "supervised data"
        message = f"training_file {request.training_file} is {shape['type']} data; method {_method(request)['type']} "
        raise invalid(message + f"needs {wanted}", "training_file")
    if validation_columns is not None:
        other = detect_format(validation_columns, request.validation_file or "", "validation_file")
        if other["type"] != shape["type"]:
            message = f"validation_file is {other['type']} data but training_file is {shape['type']}"
            raise invalid(message, "validation_file")
    return shape


def _method(request: FineTuningJobCreate) -> dict[str, Any]:
    if request.method is None or request.method.type != "dpo":
        return {"type": "sft"}
    hp = request.method.dpo.hyperparameters if request.method.dpo else None
    beta = getattr(hp, "beta", "auto")
    return {"type": "dpo", **({} if beta == "auto" else {"beta": beta})}


def build_spec(
    request: FineTuningJobCreate,
    training_columns: list[str],
    validation_columns: list[str] | None,
    defaults: dict[str, Any],
    parent: tuple[str, str, int | None] | None = None,
) -> JobSpec:
    """The job spec for an OpenAI request, given the columns of its files and the deployment's defaults.

    `parent`: (base model, job id, checkpoint step) when `model` names a fine-tuned model: the job continues from it.
    """
    overrides = _overrides(request)
    mapped: dict[str, Any] = {
        "name": request.suffix,
        "base_model": parent[0] if parent else request.model,
        "method": _method(request),
        "dataset": request.training_file,
        "validation_dataset": request.validation_file,
        "training": _training_fields(request, base_learning_rate(defaults)),
        "metadata": request.metadata,
    }
    if request.integrations:  # OpenAI's shape is the spec's: `{"type": "wandb", "wandb": {...}}`, and mlflow
        mapped["integrations"] = request.integrations
    if parent is not None:
        mapped["init_from"] = {"job": parent[1], "checkpoint_step": parent[2]}
    if "format" not in overrides:
        mapped["format"] = _files_format(request, training_columns, validation_columns)
    fixed = {k: v for k, v in defaults.items() if k not in (*REQUEST_FIELDS, "format")}
    try:
        return JobSpec.model_validate(deep_merge(deep_merge(fixed, mapped), overrides))
    except ValidationError as exc:
        summary, problems = validation_detail(list(exc.errors()))
        field = problems[0]["field"] if problems else None
        if field and field.startswith("integrations"):
            field = "integrations"  # OpenAI's `param` names the request field; the message says which part
        raise invalid(summary, REQUEST_FIELDS.get(field or "", field)) from None


def integrations_object(spec: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A job's trackers as OpenAI's job object lists them (the spec's own shape), or None: it has none."""
    return spec.get("integrations") or None


def job_hyperparameters(spec: dict[str, Any], base_lr: float) -> dict[str, Any]:
    """Any job's training settings in OpenAI's terms (jobs made at /jobs too)."""
    training = {**Training().model_dump(), **(spec.get("training") or {})}
    epochs = training["epochs"]
    return {
        "n_epochs": int(epochs) if float(epochs).is_integer() else epochs,
        "batch_size": training["batch_size"],
        "learning_rate_multiplier": round(training["learning_rate"] / base_lr, 6),
    }

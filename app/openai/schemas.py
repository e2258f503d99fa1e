"""Request and response shapes of the OpenAI-compatible API under /v1, as the `openai` SDK sends and parses them."""

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from app.spec.job import Metadata

Auto = Literal["auto"]
OpenAIStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]


def auto_or(kind: type[int] | type[float], low: float, high: float) -> Any:
    """`"auto"` or a number in (low, high] for floats, [low, high] for ints, with one plain error message."""

    def check(value: Any) -> Any:
        if value == "auto":
            return value
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        if isinstance(value, bool) or number is None or (kind is int and number != float(value)):
            raise ValueError(f'must be "auto" or a{"n integer" if kind is int else " number"}, got {value!r}')
        if not (low <= number <= high) or (kind is float and number == low):
            bounds = f"from {low:g} to {high:g}" if kind is int else f"above {low:g} and at most {high:g}"
            raise ValueError(f"must be {bounds}, got {value!r}")
        return number

    return Annotated[Auto | kind, PlainValidator(check, json_schema_input_type=Auto | kind)]


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters; "auto" keeps the deployment's default."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: auto_or(int, 1, 1000) = Field("auto", description="Passes over the data.")
    batch_size: auto_or(int, 1, 4096) = Field("auto", description="Examples per step.")
    learning_rate_multiplier: auto_or(float, 0, 1000) = Field(
        "auto", description="Times the deployment's base learning rate (2e-4 unless configured)."
    )


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters: the supervised ones and `beta`."""

    beta: auto_or(float, 0, 100) = Field("auto", description="DPO's beta (0.1 unless the spec says otherwise).")


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    """`supervised` and `dpo` train here; `reinforcement` is refused with a 400."""

    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJobCreate(BaseModel):
    """Body of POST /v1/fine_tuning/jobs: OpenAI's fields plus `spec_overrides`, this service's extension."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
                    "training_file": "ds_0123456789abcdef01234567",
                    "suffix": "support-bot",
                    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
                }
            ]
        },
    )

    model: str = Field(
        description="The base model (a Hugging Face Hub id or a directory in FT_MODELS_DIR), or one of your "
        "`fine_tuned_model` names (a checkpoint's too): the job continues from that model's adapter."
    )
    training_file: str = Field(description="A file id from POST /v1/files (the same ids as /datasets).")
    validation_file: str | None = Field(None, description="A file id whose rows give the validation loss.")
    hyperparameters: Hyperparameters | None = Field(None, description="Deprecated by OpenAI in favour of `method`.")
    method: Method | None = Field(
        None, description="`{type: supervised, supervised: {...}}` or `{type: dpo, dpo: {hyperparameters}}`."
    )
    suffix: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="Added to `fine_tuned_model`; the job's name."
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Training seed (default: the spec's, 42).")
    metadata: Metadata | None = Field(None, description="Labels; `ft.`-prefixed keys also set job spec fields.")
    integrations: list[dict[str, Any]] | None = Field(
        None,
        description='Experiment trackers: `{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}` as '
        'OpenAI takes it, and `{"type": "mlflow", "mlflow": {"tracking_uri", "experiment"}}`; credentials are the '
        "tenant's secrets (docs/trackers.md).",
    )
    spec_overrides: dict[str, Any] | None = Field(
        None, description="A partial job spec (as for POST /jobs) merged over the mapped one, e.g. `{lora: {r: 8}}`."
    )


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str = "fine-tune"
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class JobHyperparameters(BaseModel):
    n_epochs: int | float
    batch_size: int
    learning_rate_multiplier: float


class JobErrorObject(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    estimated_finish: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: OpenAIStatus
    training_file: str
    validation_file: str | None
    hyperparameters: JobHyperparameters
    method: dict[str, Any]
    seed: int
    trained_tokens: int | None
    result_files: list[str] = Field(default_factory=list)
    error: JobErrorObject | None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None
    user_provided_suffix: str | None


class EventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class CheckpointMetrics(BaseModel):
    step: int
    train_loss: float | None
    valid_loss: float | None
    full_valid_loss: float | None


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics
    download_url: str = Field(description="Extension: the checkpoint's adapter as a .tar.gz (GET, same key).")


Item = TypeVar("Item", FileObject, FineTuningJobObject, EventObject, CheckpointObject)


class ListObject(BaseModel, Generic[Item]):
    """OpenAI's list envelope; the SDK asks for the next page with `after=<last_id>` while `has_more`."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
    first_id: str | None
    last_id: str | None

    @classmethod
    def page(cls, data: list[Item], has_more: bool) -> "ListObject[Item]":
        return cls(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

"""Process settings: one object, read from FT_* environment variables and a .env file."""

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The settings a tenant may have its own value of, in FT_TENANT_LIMITS.
TENANT_LIMIT_NAMES = (
    "max_upload_bytes",
    "max_running_jobs",
    "max_queued_jobs",
    "max_dataset_storage_bytes",
    "max_training_steps",
    "max_epochs",
    "max_seq_length",
    "max_lora_rank",
    "submit_rate_per_minute",
    "upload_rate_per_minute",
    "inference_rate_per_minute",
    "max_concurrent_calls",
    "max_event_streams",
    "max_artifact_storage_bytes",
    "max_checkpoints_per_job",
    "max_priority",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="Datasets, checkpoints and artifacts live here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and progress events.")
    models_dir: Path | None = Field(None, description="Local base models; default: data_dir/models.")

    # Where files live across machines (app/storage/, docs/operations.md "Storage"); data_dir is then a local cache.
    storage_backend: Literal["local", "s3"] = Field(
        "local", description="`local`: data_dir is the store (one disk or shared volume); `s3`: an S3-style bucket."
    )
    s3_bucket: str | None = Field(None, description="The bucket (FT_STORAGE_BACKEND=s3); credentials: AWS_* env vars.")
    s3_prefix: str = Field("", description="A key prefix inside the bucket, e.g. `finetune/`; empty: the bucket root.")
    s3_endpoint_url: str | None = Field(
        None, description="The S3 API's URL for MinIO, Ceph and others, e.g. `http://minio:9000`; unset: AWS S3."
    )
    s3_region: str | None = Field(None, description="The bucket's region; unset: boto3's default (AWS_REGION).")
    s3_presign_downloads: bool = Field(
        False, description="Artifact downloads answer 307 to a presigned bucket URL; false: the API streams them."
    )
    s3_presign_expiry_s: int = Field(3600, ge=1, description="How long a presigned download URL stays valid.")
    s3_retry_seconds: float = Field(
        120,
        ge=0,
        description="How long a file upload or download keeps retrying an S3 endpoint that is away (refused, timed "
        "out, 5xx) before it fails; 0: boto3's own few retries only.",
    )

    default_chat_template: str | None = Field(
        None,
        description="The chat template for chat and sharegpt jobs on a model that has none (a name like `chatml`, "
        "or Jinja); POST /jobs/validate warns when it applies. Unset: such jobs must give format.chat_template.",
    )
    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest dataset upload accepted (413 above).")
    # Quotas, bounds and rate limits per tenant (app/tenants/limits.py, docs/security.md); 0 allows none.
    max_request_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest non-upload request body (413).")
    max_running_jobs: int = Field(2, ge=0, description="Jobs one tenant may have training at once; more wait.")
    max_queued_jobs: int = Field(20, ge=0, description="Jobs one tenant may have waiting (429 above).")
    max_dataset_storage_bytes: int = Field(20 * 1024**3, ge=0, description="Uploaded data one tenant may hold.")
    max_training_steps: int = Field(100_000, ge=1, description="Most optimizer steps one job may run (422 above).")
    max_epochs: float = Field(100, gt=0, description="Most passes over the data one job may make.")
    max_seq_length: int = Field(8192, ge=8, description="Largest training.max_seq_length accepted.")
    max_lora_rank: int = Field(256, ge=1, description="Largest lora.r accepted.")
    submit_rate_per_minute: int = Field(120, ge=0, description="Job submissions and validations per tenant a minute.")
    upload_rate_per_minute: int = Field(60, ge=0, description="Dataset uploads per tenant a minute.")
    inference_rate_per_minute: int = Field(
        120, ge=0, description="Worker calls per tenant a minute: generate, predict, evaluations, exports, chat."
    )
    max_concurrent_calls: int = Field(4, ge=0, description="Worker calls one tenant may have waiting at once (429).")
    max_event_streams: int = Field(8, ge=0, description="Open event streams (SSE) one tenant may hold at once.")
    max_artifact_storage_bytes: int = Field(
        50 * 1024**3, ge=0, description="Adapters, checkpoints and exports one tenant's jobs may hold (bytes)."
    )
    max_checkpoints_per_job: int = Field(
        50, ge=1, description="Most packed checkpoints a job's checkpoint_every_steps may ask for (422 above)."
    )
    max_priority: int = Field(9, ge=0, le=9, description="Highest job priority a tenant may set (0-9).")
    tenant_limits: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='Per-tenant overrides of the limits above (JSON), e.g. `{"research": {"max_running_jobs": 8}}`.',
    )
    training_queue: str = Field("training", description="Celery queue the API sends training tasks to.")
    inference_queue: str | None = Field(
        None,
        description="Celery queue for requests answered on a worker (predict, generate, exports), served by "
        "`celery -A worker.celery_app worker -Q <it> --pool solo`; unset: the training queue, behind training jobs.",
    )
    inference_timeout_s: float = Field(
        120, gt=0, description="How long POST /jobs/{id}/predict waits for a worker's answer before a 504."
    )
    # Serving trained models (app/serving/, docs/serving.md): /v1/chat/completions and /v1/completions.
    serving_backend: Literal["embedded", "vllm"] = Field(
        "embedded",
        description="`embedded`: the inference worker generates (base model kept loaded, adapters beside it); "
        "`vllm`: requests are proxied to the vLLM OpenAI server at FT_VLLM_URL, adapters registered at run time.",
    )
    vllm_url: str | None = Field(
        None, description="The vLLM OpenAI server, e.g. `http://vllm:8000` (FT_SERVING_BACKEND=vllm)."
    )
    vllm_api_key: str | None = Field(None, description="The key vLLM was started with (`--api-key`), if any.")
    vllm_adapter_dir: Path | None = Field(
        None,
        description="A directory the API writes unpacked adapters to and the vLLM server reads them from (a shared "
        "volume); default: data_dir/serving/adapters.",
    )
    serving_max_tokens: int = Field(1024, ge=1, description="Largest max_tokens a completion may ask for (400 above).")
    serving_max_queue: int = Field(
        64, ge=1, description="Completions waiting for the embedded backend across tenants; more are 429."
    )
    serving_timeout_s: float = Field(120, gt=0, description="How long one completion may take before a 504.")
    serving_max_batch: int = Field(8, ge=1, description="Completions the embedded backend generates in one batch.")
    serving_max_adapters: int = Field(
        8, ge=1, description="Adapters the embedded backend keeps loaded beside its base."
    )
    serving_adapter_memory_bytes: int = Field(
        2 * 1024**3,
        ge=0,
        description="Memory the embedded backend's loaded adapters may take; the least used go first.",
    )
    inference_stale_after_s: float = Field(
        300,
        gt=0,
        description="A running export or on-demand evaluation whose worker has not heartbeaten (every "
        "FT_HEARTBEAT_SECONDS) for this long is failed by the API's sweep (app/inference/reaper.py): its worker died.",
    )
    visibility_timeout_s: int = Field(
        12 * 3600, description="Redis redelivers an unacked task after this long: longer than any job."
    )
    worker_max_tasks_per_child: int = Field(1, description="1: a fresh process per job frees GPU memory.")
    webhook_secret: str | None = Field(
        None,
        description="Signs webhooks of tenants without a secret of their own (Standard Webhooks webhook-signature; "
        "the deprecated X-FT-Signature too); unset: those are sent unsigned. Per-tenant secrets: "
        "POST /admin/tenants/{tenant}/webhook-secret.",
    )
    webhook_max_response_bytes: int = Field(
        64 * 1024, ge=0, description="Most of a webhook receiver's response body read; the rest is dropped."
    )
    webhook_senders: int = Field(4, ge=1, description="Webhook deliveries one API process sends at once.")
    webhook_senders_per_tenant: int = Field(
        2, ge=1, description="Of those, how many may go to one tenant's receivers at once."
    )
    egress_allow: str = Field(
        "",
        description="Comma-separated CIDRs or host names that user-given URLs (webhooks, trackers) may reach "
        "although they are loopback or private, e.g. `10.1.2.0/24,hooks.internal`; empty: public addresses only.",
    )
    # Tenant secrets at rest (app/tenants/secret_box.py, docs/security.md); the trackers (docs/trackers.md).
    secrets_key: SecretStr | None = Field(
        None,
        description="Fernet keys, comma-separated (`ftctl secrets make-key`): the first encrypts tenant secrets, "
        "every one decrypts (rotation: put the new key first, run `ftctl secrets reencrypt`, then drop the old). "
        "Unset: a key file made once as FT_DATA_DIR/secrets.key (mode 0600), which every API and worker process "
        "must share.",
    )
    wandb_mode: Literal["online", "offline"] = Field(
        "online",
        description="Weights & Biases for jobs with a `wandb` integration: `online` sends runs to W&B (WANDB_BASE_URL, "
        "else wandb.ai) with the tenant's `wandb_api_key` secret; `offline` writes them under the job's directory "
        "for `wandb sync`, no key needed.",
    )
    template_max_chars: int = Field(64 * 1024, ge=1, description="Longest chat template a spec may carry.")
    template_render_timeout_s: float = Field(
        20, gt=0, description="Seconds a request's chat template rendering may take in its sandbox (422 above)."
    )
    template_memory_bytes: int = Field(
        1024 * 1024**2, ge=64 * 1024**2, description="Address-space limit of the chat template sandbox process."
    )
    template_max_output_chars: int = Field(
        1_000_000, ge=1, description="Longest text one rendered conversation may be (422 above)."
    )
    stream_max_seconds: float = Field(
        3600, gt=0, description="An event stream ends after this long; clients resume with Last-Event-ID."
    )
    event_stream_connections: int = Field(
        256,
        ge=1,
        description="Redis connections one API process keeps for event streams: one per job followed live, shared by "
        "all its followers, so the most jobs it follows at once (503).",
    )
    tenant_access: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict,
        description='Per-tenant allow-lists (JSON): `{"team": {"hub": ["my-org/*"], "local_models": ["tiny-*"]}}`; '
        "a tenant without an entry gets FT_HUB_ALLOW and FT_LOCAL_MODELS_ALLOW.",
    )
    hub_allow: str = Field("*", description="Hub repos (glob patterns, comma-separated) tenants may use by default.")
    local_models_allow: str = Field(
        "*", description="Local models (names under FT_MODELS_DIR, glob patterns) tenants may use by default."
    )
    hub_max_api_host_bytes: int = Field(
        64 * 1024**2,
        ge=0,
        description="A Hub dataset split larger than this is fetched by a worker, not on the API host.",
    )
    webhook_max_attempts: int = Field(8, ge=1, description="Tries per webhook before it is dropped.")
    webhook_retry_base_s: float = Field(2.0, gt=0, description="First webhook retry delay; doubles per retry.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="How long one webhook POST may take.")
    lease_seconds: float = Field(60, description="A running job whose worker stops heartbeating this long is requeued.")
    heartbeat_seconds: float = Field(5, description="How often a worker renews the lease of its running job.")
    reconcile_every_seconds: float = Field(10, description="How often the API checks leases and lost messages.")
    max_attempts: int = Field(3, ge=1, description="Tries before a job whose worker keeps dying is failed.")
    fault_oom_above_batch_size: int | None = Field(
        None, description="Testing only: raise an out-of-memory error when a micro-batch is larger than this."
    )
    openai_spec_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="A partial job spec (JSON) under every /v1 fine-tuning job, e.g. "
        '`{"quantization": null, "lora": {"r": 8}}`; its training.learning_rate is what a multiplier of 1 means.',
    )
    # What the workers have, for estimates (app/fleet/gpu_classes.py, docs/estimates.md).
    fleet_gpus: str = Field(
        "", description="The workers' GPU classes, e.g. `A10,A100-80GB`, `RTX4090:24` (GiB), or `cpu`."
    )
    worker_gpu_memory_gb: float | None = Field(
        None, ge=0, description="Every worker's GPU memory in GiB when FT_FLEET_GPUS is unset; 0: CPU-only workers."
    )
    worker_gpus: int | None = Field(
        None,
        ge=1,
        le=64,
        description="On a worker: the GPUs it trains one job on (routes multi-GPU jobs to it); default: the CUDA GPUs "
        "torch sees, else 1 (one CPU slot; e.g. 2 lets a CPU box run 2-process jobs).",
    )
    # Retention (app/jobs/retention.py): a sweep in each API process removes what these say has expired.
    retention_sweep_every_seconds: float = Field(3600, ge=0, description="How often the sweep runs; 0: never.")
    retention_keep_last_checkpoints: int | None = Field(
        None, ge=0, description="Keep only a job's newest N packed checkpoints (null: all)."
    )
    retention_delete_checkpoints_on_success: bool = Field(
        False, description="Delete a succeeded job's checkpoints (its adapter stays)."
    )
    retention_dataset_days: float | None = Field(
        None, gt=0, description="Delete datasets older than this that no queued or running job uses (null: never)."
    )
    retention_artifact_days: float | None = Field(
        None, gt=0, description="Delete a finished job's artifacts this long after it ended; its record stays."
    )
    # Logs of the API and the workers (app/observability/logs.py, docs/observability.md); traces: OTEL_* variables.
    log_format: Literal["json", "console"] = Field(
        "json",
        description="`json`: one JSON object per line with request_id, job_id, tenant and attempt, for log "
        "pipelines; `console`: aligned, readable lines (what `ftctl demo` writes).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="The lowest level logged, for every logger of the process (Celery's --loglevel too)."
    )
    access_log: bool = Field(
        True,
        description="One API log line per request (method, path, status, duration, the ids); false: only failed "
        "requests' lines (uvicorn's own access log is replaced by this one either way).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value  # `info` as Celery and uvicorn take it

    @field_validator("tenant_limits")
    @classmethod
    def _known_limits(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for tenant, overrides in value.items():
            unknown = sorted(set(overrides) - set(TENANT_LIMIT_NAMES))
            if unknown:
                raise ValueError(f"tenant {tenant!r}: unknown limit(s) {unknown}; known: {list(TENANT_LIMIT_NAMES)}")
        return value

    @field_validator("tenant_access")
    @classmethod
    def _known_access_lists(cls, value: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        # A misspelt list would silently leave the tenant on the (usually wider) defaults.
        for tenant, lists in value.items():
            unknown = sorted(set(lists) - {"hub", "local_models"})
            if unknown:
                raise ValueError(f"tenant {tenant!r}: unknown allow-list(s) {unknown}; known: ['hub', 'local_models']")
        return value

    @cached_property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'finetune.db').resolve()}"

    @cached_property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()

    def largest_upload_bytes(self) -> int:
        """The biggest upload any tenant may send: what the body-size middleware lets through before auth."""
        overrides = [o["max_upload_bytes"] for o in self.tenant_limits.values() if "max_upload_bytes" in o]
        return int(max([self.max_upload_bytes, *overrides]))


settings = Settings()

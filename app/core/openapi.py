"""The names the OpenAPI schema gives: a stable operation id for every route, a description for every tag.

Generated clients (openapi-generator, the `finetune_client` package, Postman) name their methods after the
operation ids, so an id is part of the API: FastAPI's default (`submit_job_jobs_post`) changes whenever a
function is renamed. Here each route's id is written down once, keyed by method and path, in the form
`<domain>-<verb>` (`jobs-create`, `openai-chat-completions-create`); a route missing from the table still gets
an id of that form from its path (tests/test_openapi.py asserts that every route in the schema is in the table).
"""

import re

from fastapi.routing import APIRoute

# (method, path) -> operation id. Add a line with every new route; never change a line that has shipped.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "health-live",
    ("GET", "/readyz"): "health-ready",
    ("POST", "/datasets"): "datasets-upload",
    ("GET", "/datasets"): "datasets-list",
    ("GET", "/datasets/{dataset_id}"): "datasets-get",
    ("DELETE", "/datasets/{dataset_id}"): "datasets-delete",
    ("GET", "/datasets/{dataset_id}/preview"): "datasets-preview",
    ("POST", "/jobs/validate"): "jobs-validate",
    ("POST", "/jobs"): "jobs-create",
    ("GET", "/jobs"): "jobs-list",
    ("GET", "/jobs/{job_id}"): "jobs-get",
    ("DELETE", "/jobs/{job_id}"): "jobs-delete",
    ("POST", "/jobs/{job_id}/cancel"): "jobs-cancel",
    ("POST", "/jobs/{job_id}/clone"): "jobs-clone",
    ("GET", "/jobs/{job_id}/artifacts"): "jobs-artifacts-list",
    ("GET", "/jobs/{job_id}/artifacts/{name}"): "jobs-artifacts-download",
    ("GET", "/jobs/{job_id}/checkpoints"): "jobs-checkpoints-list",
    ("GET", "/jobs/{job_id}/metrics"): "jobs-metrics-get",
    ("GET", "/jobs/{job_id}/events"): "jobs-events-stream",
    ("POST", "/jobs/{job_id}/generate"): "generations-create",
    ("GET", "/jobs/{job_id}/generations/{generation_id}"): "generations-get",
    ("POST", "/jobs/{job_id}/predict"): "predictions-create",
    ("POST", "/jobs/{job_id}/exports"): "exports-create",
    ("GET", "/jobs/{job_id}/exports"): "exports-list",
    ("GET", "/jobs/{job_id}/exports/{export_id}"): "exports-get",
    ("POST", "/jobs/{job_id}/evaluations"): "evaluations-create",
    ("GET", "/jobs/{job_id}/evaluations"): "evaluations-list",
    ("GET", "/jobs/{job_id}/evaluations/{evaluation_id}"): "evaluations-get",
    ("POST", "/v1/files"): "openai-files-upload",
    ("GET", "/v1/files"): "openai-files-list",
    ("GET", "/v1/files/{file_id}"): "openai-files-get",
    ("GET", "/v1/files/{file_id}/content"): "openai-files-content-get",
    ("POST", "/v1/fine_tuning/jobs"): "openai-fine-tuning-jobs-create",
    ("GET", "/v1/fine_tuning/jobs"): "openai-fine-tuning-jobs-list",
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): "openai-fine-tuning-jobs-get",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): "openai-fine-tuning-jobs-cancel",
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): "openai-fine-tuning-jobs-events-list",
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): "openai-fine-tuning-jobs-checkpoints-list",
    ("GET", "/v1/models"): "openai-models-list",
    ("GET", "/v1/models/{model}"): "openai-models-get",
    ("POST", "/v1/chat/completions"): "openai-chat-completions-create",
    ("POST", "/v1/completions"): "openai-completions-create",
    ("GET", "/usage"): "usage-get",
    ("GET", "/limits"): "limits-get",
    ("GET", "/admin/keys"): "admin-keys-list",
    ("POST", "/admin/keys"): "admin-keys-create",
    ("GET", "/admin/keys/{key_id}"): "admin-keys-get",
    ("POST", "/admin/keys/{key_id}/revoke"): "admin-keys-revoke",
    ("GET", "/admin/tenants"): "admin-tenants-list",
    ("GET", "/admin/tenants/{tenant}/webhook-secret"): "admin-webhook-secret-get",
    ("POST", "/admin/tenants/{tenant}/webhook-secret"): "admin-webhook-secret-rotate",
    ("DELETE", "/admin/tenants/{tenant}/webhook-secret"): "admin-webhook-secret-delete",
    ("GET", "/admin/tenants/{tenant}/hub-token"): "admin-hub-token-get",
    ("PUT", "/admin/tenants/{tenant}/hub-token"): "admin-hub-token-set",
    ("DELETE", "/admin/tenants/{tenant}/hub-token"): "admin-hub-token-delete",
    ("GET", "/admin/tenants/{tenant}/secrets"): "admin-secrets-list",
    ("PUT", "/admin/tenants/{tenant}/secrets/{name}"): "admin-secrets-set",
    ("DELETE", "/admin/tenants/{tenant}/secrets/{name}"): "admin-secrets-delete",
    ("GET", "/metrics"): "observability-metrics-get",
}
OPERATION_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
VERBS = {"GET": "get", "POST": "create", "PUT": "set", "PATCH": "update", "DELETE": "delete"}


def derived_operation_id(method: str, path: str) -> str:
    """`<domain>-<path words>-<verb>` for a route not in the table: `GET /jobs/{id}/foo` -> `jobs-foo-get`;
    a GET of a collection (a path ending in a word) is a `list`. `/v1/...` is the `openai` domain."""
    segments = [s for s in path.strip("/").split("/") if s]
    if segments[:1] == ["v1"]:
        segments[0] = "openai"
    words = [s for s in segments if not s.startswith("{")] or ["root"]
    verb = VERBS.get(method, method.lower())
    if method == "GET" and not (segments and segments[-1].startswith("{")):
        verb = "list"
    return "-".join(re.sub(r"[^a-z0-9]+", "-", w.lower()).strip("-") for w in [*words, verb])


def operation_id(route: APIRoute) -> str:
    """FastAPI's generate_unique_id_function: the route's id from OPERATION_IDS (else derived from its path)."""
    method = sorted(route.methods)[0] if route.methods else "GET"
    return OPERATION_IDS.get((method, route.path_format)) or derived_operation_id(method, route.path_format)


# One entry per router tag, in the order a user meets them: data, jobs, what a job gives, the OpenAI surface,
# the caller's own account, then operators'.
TAGS: list[dict[str, str]] = [
    {"name": "datasets", "description": "Upload training data (JSONL, JSON, CSV, TSV, Parquet), list and preview it."},
    {
        "name": "jobs",
        "description": "Submit a fine-tuning job (a JobSpec), validate one first, follow, cancel, clone or delete "
        "it, and download its adapter and checkpoints.",
    },
    {"name": "metrics", "description": "A job's curves so far (loss, eval results), as JSON or a CSV results file."},
    {"name": "events", "description": "A job's status, metrics and warnings as Server-Sent Events, live or replayed."},
    {"name": "generate", "description": "Try a trained adapter: text generated with it, beside the base model's."},
    {"name": "inference", "description": "Label texts with a trained classification job."},
    {"name": "evaluations", "description": "Score a trained adapter (and its base) on held-out data."},
    {"name": "exports", "description": "Merge an adapter into its base model, for serving without PEFT."},
    {
        "name": "serving",
        "description": "OpenAI-compatible inference with the tenant's own fine-tuned models: /v1/models, "
        "/v1/chat/completions, /v1/completions (errors in OpenAI's shape).",
    },
    {
        "name": "openai",
        "description": "OpenAI-compatible fine-tuning: /v1/files and /v1/fine_tuning/jobs, as the `openai` SDK calls "
        "them (errors in OpenAI's shape).",
    },
    {"name": "usage", "description": "What the caller's tenant holds and has used: storage, GPU-hours, jobs."},
    {
        "name": "limits",
        "description": "The caller's tenant: its quotas, bounds and rate limits (FT_TENANT_LIMITS), and its use now.",
    },
    {"name": "admin", "description": "Admin keys only: API keys, tenants, their secrets (webhook, Hub, trackers)."},
    {"name": "observability", "description": "Prometheus metrics, scraped with an API key."},
    {"name": "health", "description": "Liveness and readiness probes; no key needed."},
]

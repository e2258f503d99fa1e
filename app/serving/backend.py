"""What every serving backend takes and gives: one resolved, rendered request in, answer entries out.

The endpoints (app/serving/endpoints.py) resolve the model name to a tenant's base model or job adapter, render chat
messages through the job's chat template, check the limits, and hand a `ServingRequest` to the configured backend
(FT_SERVING_BACKEND): the embedded one (app/serving/embedded.py, the inference worker) or vLLM (app/serving/vllm.py).
A backend yields the entries app/broker/serving.py describes (`delta`, `done`, `usage`, `error`), which the
endpoints turn into OpenAI's response or its streamed chunks.
"""

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class AdapterRef:
    """A job's adapter (or one of its checkpoints) as SQL records it; the worker re-reads and re-checks it."""

    job_id: str
    checkpoint_step: int | None
    artifact_path: str  # the storage key of the `.tar.gz` (app/storage)
    sha256: str


@dataclass(frozen=True)
class ServingRequest:
    id: str  # `cmpl_<24 hex>`
    tenant: str
    model: str  # the name the caller asked for, echoed in the response
    base_model: str
    adapter: AdapterRef | None
    prompt: str  # fully rendered (chat messages through the chat template, generation prompt added)
    prompt_tokens: int
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    deadline: float = 0.0  # Unix time after which nobody waits for the answer
    created_at: float = 0.0

    def record(self) -> dict[str, Any]:
        """The JSON record queued for the embedded backend (ids and request data; the worker re-checks it)."""
        data = asdict(self)
        adapter = data.pop("adapter")
        data["job_id"] = adapter["job_id"] if adapter else None
        data["checkpoint_step"] = adapter["checkpoint_step"] if adapter else None
        return data


class Backend(Protocol):
    def generate(self, request: ServingRequest) -> AsyncIterator[dict[str, Any]]:
        """The answer as entries: `{"type": "delta", "index", "text"}`, `{"type": "done", "index",
        "finish_reason"}` per choice, then `{"type": "usage", "prompt_tokens", "completion_tokens"}`; or
        `{"type": "error", "kind", "message"}` (kind: `timeout`, `overloaded`, `invalid_request`, `internal`)."""
        ...

"""The vLLM backend: completions proxied to a running vLLM OpenAI server, each job's adapter registered at run time.

The API has already checked the key, the tenant, the rate limits and that the model is the tenant's
(app/serving/service.py); this module only talks to the operator's server at FT_VLLM_URL, which serves one base
model (`--served-model-name`, read from its GET /v1/models) with `--enable-lora` and
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True. An adapter is unpacked from the store into FT_VLLM_ADAPTER_DIR (a volume the
server reads too), its checksum checked, and registered once under a name only we make: `<job id>[-ckpt-<step>]-
<sha256 prefix>`, so a checkpoint or a retrained file never answers under another's name. Names and paths are built
from checked ids and checksums only; nothing a caller typed reaches a path. A server that restarted forgets its
adapters: its 404 for the name re-registers it once. The vLLM URL is the operator's, not a user's: the egress
guard does not apply. docs/serving.md "vLLM backend" says how to start and size the server.
"""

import json
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import httpx

from app import storage
from app.core.config import settings
from app.serving.backend import AdapterRef, ServingRequest

SHA256 = re.compile(r"^[0-9a-f]{64}$")
CONNECT_TIMEOUT_S = 5.0
MARKER = "adapter_config.json"
# (server URL, lora name) pairs this process has registered; a restarted server's 404 drops the name again.
_registered: set[tuple[str, str]] = set()
_bases: dict[str, set[str]] = {}  # server URL -> its base model names (GET /v1/models), re-read on a miss


class VllmError(Exception):
    """A failure to report as an `error` entry of this kind (app/serving/backend.py)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "kind": kind, "message": message}


def lora_name(adapter: AdapterRef) -> str:
    """The adapter's name on the vLLM server, from its checked job id, step and checksum."""
    if not (adapter.job_id.startswith("job_") and storage.SAFE_ID.fullmatch(adapter.job_id)):
        raise VllmError("internal", f"refused to serve adapter of {adapter.job_id!r}: not a job id")
    if not SHA256.fullmatch(adapter.sha256):
        raise VllmError("internal", f"refused to serve job {adapter.job_id}'s adapter: its checksum is not a sha256")
    step = f"-ckpt-{int(adapter.checkpoint_step)}" if adapter.checkpoint_step is not None else ""
    return f"{adapter.job_id}{step}-{adapter.sha256[:16]}"


def adapter_root() -> Path:
    return (settings.vllm_adapter_dir or settings.data_dir / "serving" / "adapters").resolve()


def unpack_adapter(adapter: AdapterRef, name: str) -> Path:
    """The adapter's files under FT_VLLM_ADAPTER_DIR/<name>, from the store, checksum checked (idempotent: a copy
    already there is used; concurrent callers each extract to their own partial directory, one rename wins)."""
    dest = adapter_root() / name
    if (dest / MARKER).is_file():
        return dest
    try:
        archive = storage.cached(adapter.artifact_path)
    except ValueError as exc:
        raise VllmError("internal", f"job {adapter.job_id}'s adapter key is not a stored file: {exc}") from None
    if not archive.is_file():
        raise VllmError("internal", f"the adapter of job {adapter.job_id} is recorded but its file is missing")
    if storage.sha256_file(archive) != adapter.sha256:
        raise VllmError("internal", f"job {adapter.job_id}'s adapter file does not match its recorded checksum")
    partial = dest.with_name(f"{name}.partial-{uuid.uuid4().hex}")
    try:
        storage.unpack(archive, partial)
        if not (partial / MARKER).is_file():
            raise VllmError("internal", f"job {adapter.job_id}'s adapter archive has no {MARKER}")
        try:
            partial.rename(dest)
        except OSError:  # another request's copy landed first: same checksum, same files
            if not (dest / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def _vllm_message(response: httpx.Response) -> str:
    """vLLM's own words for a refusal (`{"error": {"message"}}`), else the start of its body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    inner = body.get("error", body) if isinstance(body, dict) else body
    return str(inner.get("message") if isinstance(inner, dict) else inner)[:500]


class VllmBackend:
    """The Backend protocol (app/serving/backend.py) over a vLLM OpenAI server's /v1/completions, streamed."""

    def __init__(self, url: str | None = None, api_key: str | None = None):
        self.url = (url or settings.vllm_url or "").rstrip("/")
        self.api_key = api_key if api_key is not None else settings.vllm_api_key
        self.where = f"the vLLM server at FT_VLLM_URL={self.url or '(unset)'}"

    async def generate(self, request: ServingRequest) -> AsyncIterator[dict[str, Any]]:
        """Register the request's adapter if needed, then stream vLLM's completion as answer entries."""
        deadline = request.deadline or time.time() + settings.serving_timeout_s
        if not self.url:
            yield error("internal", "FT_SERVING_BACKEND=vllm needs FT_VLLM_URL, the vLLM OpenAI server's URL")
            return
        if time.time() >= deadline:
            yield error("timeout", "the completion's deadline passed before it reached vLLM (FT_SERVING_TIMEOUT_S)")
            return
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(max(deadline - time.time(), 0.1), connect=CONNECT_TIMEOUT_S)
        try:
            async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout) as client:
                model = await self._model_for(client, request)
                async with aclosing(self._completion(client, request, model, deadline)) as entries:
                    async for entry in entries:
                        yield entry
        except VllmError as exc:
            yield error(exc.kind, exc.message)
        except TimeoutError:
            yield error("timeout", f"{self.where} did not answer within FT_SERVING_TIMEOUT_S; try again")
        except httpx.TimeoutException as exc:
            kind = "overloaded" if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout) else "timeout"
            yield error(kind, f"{self.where} did not answer in time ({type(exc).__name__}); try again")
        except httpx.TransportError as exc:
            yield error("overloaded", f"{self.where} cannot be reached ({type(exc).__name__}: {exc}); retry shortly")

    async def _model_for(self, client: httpx.AsyncClient, request: ServingRequest) -> str:
        """The name to ask vLLM for: the request's registered adapter, or the base; the base must be the served one."""
        if request.base_model not in _bases.get(self.url, set()):
            _bases[self.url] = await self._served_bases(client)
        bases = _bases[self.url]
        if request.base_model not in bases:
            served = ", ".join(sorted(bases)) or "no base model"
            raise VllmError(
                "invalid_request",
                f"this deployment's vLLM server serves {served}, not {request.base_model!r}, so {request.model!r} "
                "cannot be called here; ask the operator to serve that base (vllm serve --served-model-name)",
            )
        if request.adapter is None:
            return request.base_model
        name = lora_name(request.adapter)
        if (self.url, name) not in _registered:
            await self._register(client, request.adapter, name)
        return name

    async def _served_bases(self, client: httpx.AsyncClient) -> set[str]:
        response = await client.get("/v1/models")
        self._raise_for(response, "listing its models")
        return {m["id"] for m in response.json().get("data", []) if not m.get("parent")}

    async def _register(self, client: httpx.AsyncClient, adapter: AdapterRef, name: str) -> None:
        path = await anyio.to_thread.run_sync(unpack_adapter, adapter, name)
        response = await client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        # A 400 "already loaded": another API process (or an earlier life of this one) registered it.
        already = response.status_code == 400 and "already" in _vllm_message(response)
        if response.is_error and not already:
            raise VllmError(
                "internal",
                f"{self.where} refused job {adapter.job_id}'s adapter: {_vllm_message(response)} (start it with "
                "--enable-lora, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --max-lora-rank at least the job's lora.r)",
            )
        _registered.add((self.url, name))

    def _payload(self, request: ServingRequest, model: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model,
            "prompt": request.prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "n": request.n,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.seed is not None:
            payload["seed"] = request.seed
        return payload

    async def _completion(
        self, client: httpx.AsyncClient, request: ServingRequest, model: str, deadline: float
    ) -> AsyncIterator[dict[str, Any]]:
        """vLLM's streamed text_completion chunks as entries; one re-registration when a restarted server lost the
        adapter (its 404 comes before any chunk)."""
        for attempt in (1, 2):
            async with client.stream("POST", "/v1/completions", json=self._payload(request, model)) as response:
                if response.status_code == 404 and request.adapter is not None and attempt == 1:
                    await response.aread()
                    _registered.discard((self.url, model))
                    await self._register(client, request.adapter, model)
                    continue
                if response.is_error:
                    await response.aread()
                    self._raise_for(response, "completing")
                async with aclosing(self._entries(response, deadline)) as entries:
                    async for entry in entries:
                        yield entry
                return

    async def _entries(self, response: httpx.Response, deadline: float) -> AsyncIterator[dict[str, Any]]:
        lines = response.aiter_lines()
        while True:
            with anyio.fail_after(max(deadline - time.time(), 0)):  # never around a yield: only the read
                line = await anext(lines, None)
            if line is None:
                raise VllmError("internal", f"{self.where} ended its answer before its usage chunk")
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                raise VllmError("internal", f"{self.where} ended its answer without usage")
            try:
                chunk = json.loads(data)
            except ValueError:
                raise VllmError("internal", f"{self.where} sent a chunk that is not JSON: {data[:200]!r}") from None
            if "error" in chunk:
                raise VllmError("internal", f"{self.where} failed the completion: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                index = int(choice["index"])
                if choice.get("text"):
                    yield {"type": "delta", "index": index, "text": choice["text"]}
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
                    yield {"type": "done", "index": index, "finish_reason": finish}
            if usage := chunk.get("usage"):
                yield {
                    "type": "usage",
                    "prompt_tokens": int(usage["prompt_tokens"]),
                    "completion_tokens": int(usage["completion_tokens"]),
                }
                return

    def _raise_for(self, response: httpx.Response, doing: str) -> None:
        """A vLLM error status as the entry kind it is: its 400 is the request's fault, 429/503 a busy server."""
        if not response.is_error:
            return
        message = f"{self.where} refused {doing} ({response.status_code}): {_vllm_message(response)}"
        if response.status_code == 400:
            raise VllmError("invalid_request", message)
        if response.status_code in (429, 503):
            raise VllmError("overloaded", message + "; retry shortly")
        if response.status_code in (401, 403):
            raise VllmError("internal", message + " (FT_VLLM_API_KEY must be the key vLLM was started with)")
        raise VllmError("internal", message)

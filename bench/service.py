"""Our side through the real service: uvicorn + a Celery worker (LocalStack) on an isolated FT_DATA_DIR and SQLite."""

import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.workload import Workload, job_spec
from ftctl.localstack import LocalStack

TERMINAL = {"succeeded", "failed", "cancelled"}


def service_env(workdir: Path, redis_url: str) -> dict[str, str]:
    """The stack's environment: its own data dir, SQLite, a Redis database and a queue no other worker reads."""
    env = {
        **os.environ,
        "FT_DATA_DIR": str(workdir / "data"),
        "FT_MODELS_DIR": str(workdir / "data" / "models"),
        "FT_REDIS_URL": redis_url,
        "FT_TRAINING_QUEUE": f"bench-{secrets.token_hex(4)}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("FT_DATABASE_URL", None)
    return env


@dataclass
class Service:
    stack: LocalStack
    client: httpx.Client

    @classmethod
    def start(cls, env: dict[str, str], log_dir: Path) -> "Service":
        stack = LocalStack(env=env, log_dir=log_dir).start()
        argv = [sys.executable, "-m", "ftctl.main", "keys", "create", "bench"]
        key = subprocess.run(argv, env=stack.env, check=True, capture_output=True, text=True).stdout.split()[-1]
        client = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        service = cls(stack, client)
        service.wait_worker_ready(log_dir / "worker.log")
        return service

    def wait_worker_ready(self, log: Path, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and " ready." in log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Celery worker was not ready within {timeout}s; see {log}")

    def stop(self) -> None:
        self.client.close()
        self.stack.stop()

    def upload(self, path: Path) -> str:
        response = self.client.post(
            "/datasets", files={"file": (path.name, path.read_bytes())}, data={"name": path.stem}
        )
        response.raise_for_status()
        return response.json()["id"]

    def submit(self, spec: dict[str, Any]) -> tuple[str, float]:
        started = time.monotonic()
        response = self.client.post("/jobs", json=spec)
        response.raise_for_status()
        return response.json()["id"], started

    def follow(
        self,
        job_id: str,
        until: set[str] = TERMINAL,
        step: int | None = None,
        timeout: float = 3600,
        interval: float = 0.05,
    ) -> dict:
        """Poll GET /jobs/{id} every `interval` seconds until a status in `until` (or progress reaching `step`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job["status"] in until or (step is not None and job["progress"]["step"] >= step):
                return job
            if job["status"] in TERMINAL:
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
            time.sleep(interval)
        raise TimeoutError(f"job {job_id} not done after {timeout}s")

    def adapter(self, job_id: str, out_dir: Path) -> Path:
        archive = self.client.get(f"/jobs/{job_id}/artifacts/adapter")
        archive.raise_for_status()
        out_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
            tar.extractall(out_dir, filter="data")
        return out_dir

    def train_losses(self, job_id: str) -> list[float]:
        points = self.client.get(f"/jobs/{job_id}/metrics").json()["train"]
        return [p["loss"] for p in points if p["loss"] is not None]


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_ours(service: Service, w: Workload, train: Path, evals: Path, out_dir: Path) -> dict[str, Any]:
    """Submit the job, wait for the adapter, and read the worker's own figures from the adapter's metrics.json."""
    spec = job_spec(w, service.upload(train), service.upload(evals))
    job_id, _ = service.submit(spec)
    # Polled slowly, timed by the record: a 20 Hz poller would take CPU from the training it measures (2 cores).
    job = service.follow(job_id, interval=1.0)
    seconds_to_adapter = (_instant(job["finished_at"]) - _instant(job["created_at"])).total_seconds()
    if job["status"] != "succeeded":
        raise RuntimeError(f"bench job {job_id} {job['status']}: {job['error']}")
    adapter_dir = service.adapter(job_id, out_dir / "adapter")
    metrics = json.loads((adapter_dir / "metrics.json").read_text())
    return {
        "side": "ours",
        "job_id": job_id,
        "tokens": metrics["train_tokens"],
        "train_seconds": metrics["train_seconds"],
        "train_cpu_seconds": metrics.get("train_cpu_seconds"),
        "seconds_to_adapter": seconds_to_adapter,
        "peak_memory_bytes": metrics["peak_memory_bytes"],
        "train_losses": service.train_losses(job_id),
        "trainer_eval_loss": metrics["eval_loss"],
        "steps": metrics["steps"],
        "adapter_dir": str(adapter_dir),
        "spec": spec,
    }

"""Storage across machines: a private stack on FT_STORAGE_BACKEND=s3 (a real moto_server), where the API and each
worker have their own FT_DATA_DIR, so nothing can rely on a shared disk. A worker is killed mid-job and the job
resumes on a worker with an empty disk, from the checkpoint in the bucket."""

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODELS_DIR
from tests.integration.conftest import Stack, private_stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl
from tests.integration.test_reliability import CHAOS_ENV
from tests.s3_server import S3Server, moto_server

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

STEPS = 24


@pytest.fixture(scope="module")
def s3(session_dir: Path) -> Iterator[S3Server]:
    with moto_server(session_dir / "moto") as server:
        yield server


@pytest.fixture(scope="module")
def cloud(tiny_model: Path, session_dir: Path, s3: S3Server) -> Iterator[tuple[Stack, str]]:
    """API on its own disk; workers are started per test, each on another disk. One bucket, one SQL database."""
    root = session_dir / "s3-stack"
    bucket = s3.make_bucket()
    env = {
        **os.environ,
        **CHAOS_ENV,
        **s3.env(bucket),
        "FT_DATA_DIR": str(root / "api-disk"),
        "FT_DATABASE_URL": f"sqlite:///{root / 'shared.db'}",  # SQL is shared; files are not
        "FT_MODELS_DIR": str(MODELS_DIR),
        "FT_INFERENCE_QUEUE": "inference",  # generate and exports: a worker on a third disk
    }
    root.mkdir(parents=True, exist_ok=True)
    with private_stack("s3", root, env) as stack:
        yield stack, bucket


def _worker_env(stack: Stack, disk: str) -> dict[str, str]:
    return {"FT_DATA_DIR": str(stack.local.log_dir.parent / disk)}


def _start_inference_worker(stack: Stack, disk: str) -> None:
    api_disk = stack.local.env["FT_DATA_DIR"]
    stack.local.env["FT_DATA_DIR"] = str(stack.local.log_dir.parent / disk)
    try:
        stack.local.start_inference_worker()
    finally:
        stack.local.env["FT_DATA_DIR"] = api_disk


def _wait_for(what: str, check: object, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _download(stack: Stack, url: str) -> bytes:
    response = stack.client.get(url)
    assert response.status_code == 200, response.text
    assert hashlib.sha256(response.content).hexdigest() == response.headers["x-content-sha256"]
    return response.content


def _members(archive: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return set(tar.getnames())


def test_job_survives_losing_its_worker_and_disk(cloud: tuple[Stack, str], s3: S3Server) -> None:
    stack, bucket = cloud
    dataset = stack.upload("quotes.jsonl", quotes_jsonl())
    assert s3.keys(bucket, "datasets/") == [f"datasets/{dataset['id']}/rows.jsonl"]

    stack.local.start_worker("worker", extra_env=_worker_env(stack, "disk-a"))
    spec = qlora_spec(dataset["id"], max_steps=STEPS, batch_size=2, checkpoint_every_steps=5, eval_fraction=0.0)
    job = stack.client.post("/jobs", json=spec).json()
    resume_prefix = f"jobs/{job['id']}/resume/"
    _wait_for("a resumable checkpoint in the bucket", lambda: s3.keys(bucket, resume_prefix))
    stack.local.kill("worker")  # the machine is gone, and its disk with it
    stack.local.stop_process("worker")
    assert stack.client.get(f"/jobs/{job['id']}").json()["status"] == "running"
    stack.wait(job["id"], timeout=30, until={"queued"})  # the lease expires; the reconciler requeues

    fresh = stack.local.start_worker("worker-b", extra_env=_worker_env(stack, "disk-b"))
    assert fresh.poll() is None and not (stack.local.log_dir.parent / "disk-b" / "jobs").exists()
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    log = (stack.local.log_dir / "worker-b.log").read_text()
    assert "from the store to resume from it" in log and "resuming from step" in log
    train = stack.client.get(f"/jobs/{job['id']}/metrics").json()["train"]
    assert [p["step"] for p in train] == list(range(1, STEPS + 1)), "each step exactly once"

    keys = s3.keys(bucket, f"jobs/{job['id']}/")
    assert f"jobs/{job['id']}/adapter.tar.gz" in keys
    assert f"jobs/{job['id']}/checkpoints/checkpoint-5.tar.gz" in keys
    assert not [k for k in keys if "/resume/" in k], "resumable state is dropped once the job has ended"

    # Streamed through the API (FT_S3_PRESIGN_DOWNLOADS off).
    adapter = _download(stack, f"/jobs/{job['id']}/artifacts/adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= _members(adapter)
    checkpoints = stack.client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints][:2] == [5, 10]
    assert "adapter_model.safetensors" in _members(_download(stack, checkpoints[0]["download_url"]))

    # Presigned: the API answers 307 and the bucket serves the bytes.
    stack.local.env["FT_S3_PRESIGN_DOWNLOADS"] = "true"
    stack.local.stop_process("api")
    stack.local.start_api()
    redirect = stack.client.get(f"/jobs/{job['id']}/artifacts/adapter", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3.endpoint_url)
    assert redirect.headers["x-content-sha256"] == hashlib.sha256(adapter).hexdigest()
    assert httpx.get(redirect.headers["location"]).content == adapter

    # Generate and a merged export on an inference worker whose disk never held the adapter.
    _start_inference_worker(stack, "disk-c")
    answer = stack.client.post(f"/jobs/{job['id']}/generate", json={"prompts": ["to be"], "max_new_tokens": 2})
    assert answer.status_code == 200, answer.text
    disk_c = stack.local.log_dir.parent / "disk-c"
    assert (disk_c / "jobs" / job["id"] / "adapter" / "adapter_config.json").is_file(), "unpacked from the bucket"
    export = stack.client.post(f"/jobs/{job['id']}/exports", json={"kind": "merged"}).json()
    export_url = f"/jobs/{job['id']}/exports/{export['id']}"
    _wait_for("the merged export", lambda: stack.client.get(export_url).json()["status"] in ("succeeded", "failed"))
    assert stack.client.get(export_url).json()["status"] == "succeeded"
    assert f"jobs/{job['id']}/merged.tar.gz" in s3.keys(bucket, f"jobs/{job['id']}/")
    merged = stack.client.get(f"/jobs/{job['id']}/artifacts/merged", follow_redirects=True)
    assert merged.status_code == 200 and "config.json" in _members(merged.content)

    deleted = stack.client.delete(f"/jobs/{job['id']}")
    assert deleted.status_code == 200 and deleted.json()["freed_bytes"] > 0
    assert s3.keys(bucket, f"jobs/{job['id']}/") == []
    stack.local.stop_process("worker-b")
    stack.local.stop_process("inference")

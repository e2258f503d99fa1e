"""A full disk on the worker: the job fails with a clear error, leaves nothing half-written, and the worker goes on.

The worker's FT_DATA_DIR/jobs is a small tmpfs mounted for this module (unmounted after), filled by a ballast file
that stands for whatever else took the space; each test leaves just less room than its job needs at one write.
"""

import io
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR
from tests.integration.conftest import Stack, private_stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

TMPFS_SIZE = "8m"
KB = 1024


@pytest.fixture(scope="module")
def small_disk(tiny_model: Path, session_dir: Path) -> Iterator[tuple[Stack, Path]]:
    """A private stack whose worker writes its jobs onto an 8 MB tmpfs: (the stack, the tmpfs)."""
    root = session_dir / "full-disk"
    jobs = root / "data" / "jobs"
    jobs.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(jobs)], text=True)
    assert mounted.returncode == 0, "mounting a tmpfs needs root (or CAP_SYS_ADMIN): run the suite as root"
    env = {**os.environ, "FT_DATA_DIR": str(root / "data"), "FT_MODELS_DIR": str(MODELS_DIR)}
    env.pop("FT_DATABASE_URL", None)
    try:
        with private_stack("full-disk", root, env, worker=True) as stack:
            yield stack, jobs
    finally:
        subprocess.run(["umount", "-l", str(jobs)], check=False)


@pytest.fixture(scope="module")
def dataset(small_disk: tuple[Stack, Path]) -> dict:
    return small_disk[0].upload("quotes.jsonl", quotes_jsonl())


def _leave_free(disk: Path, free: int) -> Path:
    """Fill the disk until `free` bytes are left (on top of what is there)."""
    ballast = disk / f"ballast-{len(list(disk.glob('ballast-*')))}"
    with ballast.open("wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, shutil.disk_usage(disk).free - free)
    return ballast


def _run(stack: Stack, dataset: dict, what: str, **training: object) -> dict:
    """Submit a job, wait for its end, and print its wall time (a FIGURE line for docs/operations.md)."""
    training = {"batch_size": 2, "eval_fraction": 0.0, "checkpoint_every_steps": None, **training}
    submitted = time.monotonic()
    response = stack.client.post("/jobs", json=qlora_spec(dataset["id"], **training))
    assert response.status_code == 201, response.text
    job = stack.wait(response.json()["id"], timeout=600)
    print(f"FIGURE full disk, {what}: {job['status']} after {time.monotonic() - submitted:.1f} s")
    return job


def _left_behind(job_dir: Path) -> list[str]:
    """What a failed job left that is not a recorded, whole file: partial archives, the adapter, resumable state."""
    suspects = [*job_dir.rglob("*.partial"), job_dir / "adapter", job_dir / "adapter.tar.gz", job_dir / "trainer"]
    return [str(p.relative_to(job_dir)) for p in suspects if p.exists()]


def _assert_disk_full(job: dict, disk: Path) -> None:
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert job["error"]["type"] == "disk_full", job["error"]
    assert f"no space left on the worker's disk at {disk}" in job["error"]["message"], job["error"]


def test_a_full_disk_at_a_checkpoint_fails_the_job_and_the_worker_takes_the_next(
    small_disk: tuple[Stack, Path], dataset: dict
) -> None:
    stack, disk = small_disk
    worker = stack.local.processes["worker"]
    ballast = _leave_free(disk, 1600 * KB)  # a checkpoint (~780 KB) and its packed adapter (~280 KB) fit once
    free_before = shutil.disk_usage(disk).free
    job = _run(stack, dataset, "at checkpoint 4 of 6 steps", max_steps=6, checkpoint_every_steps=2)
    _assert_disk_full(job, disk)
    listed = stack.client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step"] for c in listed] == [2], "only the checkpoint that was written whole is listed"
    archive = stack.client.get(listed[0]["download_url"])
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert "adapter_model.safetensors" in tar.getnames()
    job_dir = disk / job["id"]
    assert _left_behind(job_dir) == [], "partial files are removed"
    kept = sum(p.stat().st_size for p in job_dir.rglob("*") if p.is_file())
    assert shutil.disk_usage(disk).free >= free_before - kept - 64 * KB, "the space the failed write took is back"
    # The same worker process takes the next job, one that fits in what is left.
    fits = _run(stack, dataset, "the next job (4 steps, fits)", max_steps=4)
    assert fits["status"] == "succeeded", fits["error"]
    assert worker.poll() is None and stack.local.processes["worker"] is worker
    ballast.unlink()


def test_a_full_disk_at_the_adapter_fails_the_job_and_freeing_space_lets_the_next_run(
    small_disk: tuple[Stack, Path], dataset: dict
) -> None:
    stack, disk = small_disk
    ballast = _leave_free(disk, 150 * KB)  # the adapter's weights alone are ~280 KB
    job = _run(stack, dataset, "at the adapter of 3 steps", max_steps=3)
    _assert_disk_full(job, disk)
    assert _left_behind(disk / job["id"]) == [], "the half-written adapter is removed"
    assert [a["name"] for a in stack.client.get(f"/jobs/{job['id']}/artifacts").json()["data"]] == []
    ballast.unlink()  # the operator frees space
    again = _run(stack, dataset, "the same job once space is freed", max_steps=3)
    assert again["status"] == "succeeded", again["error"]
    assert stack.client.get(f"/jobs/{again['id']}/artifacts/adapter").status_code == 200

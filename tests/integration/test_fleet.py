"""Many workers on one broker: priorities, queue positions, parallel jobs, routing by GPU count, multi-process
(DDP on gloo) jobs, and no shared disk.

A private stack (own Redis, SQLite, an S3-compatible store: a real moto_server) whose workers each test starts with
its own FT_WORKER_GPUS and its own FT_DATA_DIR, without -Q, as an operator runs them:
`celery -A worker.celery_app worker`. Only SQL, Redis and the bucket are shared, as across machines.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.broker.queue import broker_queue_length
from tests.conftest import MODELS_DIR
from tests.integration.conftest import TERMINAL, Stack, private_stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl
from tests.s3_server import S3Server, moto_server

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

QUEUE = "training-fleet"


@pytest.fixture(scope="module")
def s3(session_dir: Path) -> Iterator[S3Server]:
    with moto_server(session_dir / "moto-fleet") as server:
        yield server


@pytest.fixture(scope="module")
def fleet(tiny_model: Path, session_dir: Path, s3: S3Server) -> Iterator[Stack]:
    root = session_dir / "fleet"
    env = {
        **os.environ,
        **s3.env(s3.make_bucket()),
        "FT_DATA_DIR": str(root / "api-disk"),
        "FT_DATABASE_URL": f"sqlite:///{root / 'fleet.db'}",  # SQL is shared (PostgreSQL in a real fleet)
        "FT_MODELS_DIR": str(MODELS_DIR),
        "FT_TRAINING_QUEUE": QUEUE,
        "FT_FLEET_GPUS": "cpu*2",  # the API refuses what no machine has; CPU workers declare 1 or 2 slots
    }
    root.mkdir(parents=True, exist_ok=True)
    with private_stack("fleet", root, env) as stack:
        yield stack


@pytest.fixture(scope="module")
def dataset(fleet: Stack) -> dict:
    return fleet.upload("quotes.jsonl", quotes_jsonl())


@pytest.fixture(autouse=True)
def _stop_workers(fleet: Stack) -> Iterator[None]:
    yield
    for name in [n for n in fleet.local.processes if n.startswith("worker")]:
        fleet.local.stop_process(name)  # a failed test must not leave its worker to take the next test's jobs


def start_worker(stack: Stack, name: str, gpus: int) -> subprocess.Popen:
    """A worker as operators run it (no -Q): it consumes every queue FT_WORKER_GPUS lets it serve."""
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO"]
    hostname = f"{name}-{stack.local.api_port}@%h"
    disk = stack.local.log_dir.parent / f"disk-{name}"  # each worker its own disk, as on its own machine
    env = {"FT_WORKER_GPUS": str(gpus), "FT_DATA_DIR": str(disk)}
    return stack.local._spawn(name, [*argv, "--hostname", hostname], env)


def submit(stack: Stack, dataset: dict, steps: int = 3, **extra: object) -> dict:
    spec = {**qlora_spec(dataset["id"], max_steps=steps, batch_size=2, eval_fraction=0.0), **extra}
    response = stack.client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def get(stack: Stack, job: dict) -> dict:
    return stack.client.get(f"/jobs/{job['id']}").json()


def wait_until(check: object, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def worker_log(stack: Stack, name: str) -> str:
    path = stack.local.log_dir / f"{name}.log"
    return path.read_text() if path.exists() else ""


def test_higher_priority_starts_first_and_queue_positions_say_so(fleet: Stack, dataset: dict) -> None:
    start_worker(fleet, "worker", gpus=1)
    blocker = submit(fleet, dataset, steps=5000)
    wait_until(lambda: get(fleet, blocker)["progress"]["step"] >= 1, what="the long job runs")
    low = submit(fleet, dataset, priority=0)
    mid = submit(fleet, dataset, priority=5)
    high = submit(fleet, dataset, priority=9)
    assert (low["priority"], low["queue"], high["queue_position"]) == (0, QUEUE, 1)
    assert [get(fleet, j)["queue_position"] for j in (high, mid, low)] == [1, 2, 3]
    listed = {j["id"]: j["queue_position"] for j in fleet.client.get("/jobs").json()["data"]}
    assert [listed[j["id"]] for j in (high, mid, low)] == [1, 2, 3]
    assert listed[blocker["id"]] is None  # running: no place in line
    time.sleep(2)
    broker = redis.Redis.from_url(fleet.local.env["FT_REDIS_URL"])
    assert broker_queue_length(broker, QUEUE) == 3, "the busy worker holds no second message: all three wait in Redis"
    assert broker.llen(QUEUE) == 1 and broker.llen(f"{QUEUE}:9") == 1  # spec 9 -> Redis level 0 (the bare name)

    fleet.client.post(f"/jobs/{blocker['id']}/cancel")
    done = [fleet.wait(j["id"], timeout=240) for j in (high, mid, low)]
    assert [j["status"] for j in done] == ["succeeded"] * 3
    started = sorted(done, key=lambda j: j["started_at"])
    assert [j["id"] for j in started] == [high["id"], mid["id"], low["id"]]


def test_two_workers_run_two_jobs_at_once_and_never_the_same_one(fleet: Stack, dataset: dict) -> None:
    start_worker(fleet, "worker-a", gpus=1)
    start_worker(fleet, "worker-b", gpus=1)
    first, second = submit(fleet, dataset, steps=5000), submit(fleet, dataset, steps=5000)

    def both_training() -> bool:
        jobs = [get(fleet, first), get(fleet, second)]
        return all(j["status"] == "running" and j["progress"]["step"] >= 1 for j in jobs)

    wait_until(both_training, timeout=180, what="both jobs training at the same time")
    running = [get(fleet, first), get(fleet, second)]
    assert running[0]["worker"] != running[1]["worker"]
    logs = {name: worker_log(fleet, name) for name in ("worker-a", "worker-b")}
    for job in (first, second):  # each claimed once, by exactly one of the two workers
        assert sum(log.count(f"job {job['id']}: attempt 1") for log in logs.values()) == 1
    for job in (first, second):
        fleet.client.post(f"/jobs/{job['id']}/cancel")
    ended = [fleet.wait(j["id"], timeout=60) for j in (first, second)]
    assert all(j["status"] in TERMINAL and j["attempts"] == 1 for j in ended)


def test_a_two_gpu_job_waits_for_a_worker_with_two_gpus(fleet: Stack, dataset: dict) -> None:
    refused = fleet.client.post("/jobs", json={**qlora_spec(dataset["id"]), "resources": {"gpus": 3}})
    assert refused.status_code == 422 and "cpu*2" in refused.json()["detail"], refused.text

    start_worker(fleet, "worker-1gpu", gpus=1)
    big = submit(fleet, dataset, resources={"gpus": 2})
    small = submit(fleet, dataset)
    assert big["queue"] == f"{QUEUE}.g2" and small["queue"] == QUEUE
    assert fleet.wait(small["id"], timeout=180)["status"] == "succeeded"  # the 1-GPU worker is up and idle
    time.sleep(2)
    waiting = get(fleet, big)
    assert waiting["status"] == "queued" and waiting["queue_position"] == 1

    start_worker(fleet, "worker-2gpu", gpus=2)
    assert fleet.wait(big["id"], timeout=180)["status"] == "succeeded"
    log = worker_log(fleet, "worker-2gpu")
    assert f"job {big['id']}: attempt 1" in log and f"job {big['id']}: training on 2 processes (torchrun, gloo)" in log
    assert big["id"] not in worker_log(fleet, "worker-1gpu")


def _ranks_of(job_id: str) -> list[int]:
    """Processes still running a rank of the job (their command line names the job's request file; torchrun's
    agent, which names it too, is left out)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "worker.ddp_main" in cmdline and job_id in cmdline and "torch.distributed.run" not in cmdline:
            found.append(int(proc.name))
    return found


def test_a_two_process_job_trains_as_one_and_cancels_on_every_rank(fleet: Stack, dataset: dict) -> None:
    """DDP on gloo: one curve (rank 0 reports), one adapter, and a cancel that stops both ranks at once."""
    start_worker(fleet, "worker-2gpu", gpus=2)
    spec = qlora_spec(dataset["id"], max_steps=6, batch_size=2, eval_fraction=0.0, checkpoint_every_steps=3)
    job = fleet.client.post("/jobs", json={**spec, "resources": {"gpus": 2}}).json()
    done = fleet.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    train = fleet.client.get(f"/jobs/{job['id']}/metrics").json()["train"]
    assert [p["step"] for p in train] == list(range(1, 7)), "each step once: only rank 0 reports"
    kinds = sorted(a["kind"] for a in fleet.client.get(f"/jobs/{job['id']}/artifacts").json()["data"])
    assert kinds == ["adapter", "checkpoint", "checkpoint"]
    assert fleet.client.get(f"/jobs/{job['id']}/artifacts/adapter").status_code == 200

    long = submit(fleet, dataset, steps=5000, resources={"gpus": 2})
    wait_until(lambda: get(fleet, long)["progress"]["step"] >= 2, timeout=180, what="the 2-process job trains")
    assert len(_ranks_of(long["id"])) == 2
    fleet.client.post(f"/jobs/{long['id']}/cancel")
    cancelled = fleet.wait(long["id"], timeout=60)
    assert cancelled["status"] == "cancelled" and cancelled["progress"]["step"] < 5000
    wait_until(lambda: not _ranks_of(long["id"]), timeout=30, what="both ranks exit")

    # The kernel's OOM killer (or anything else) kills the task process: its ranks must not train on as orphans.
    orphaned = submit(fleet, dataset, steps=5000, resources={"gpus": 2})
    wait_until(lambda: get(fleet, orphaned)["progress"]["step"] >= 2, timeout=180, what="the 2-process job trains")
    task_pid = int(get(fleet, orphaned)["worker"].rsplit(":", 1)[1])
    assert len(_ranks_of(orphaned["id"])) == 2
    os.kill(task_pid, signal.SIGKILL)
    wait_until(lambda: not _ranks_of(orphaned["id"]), timeout=30, what="the ranks die with their task process")
    fleet.client.post(f"/jobs/{orphaned['id']}/cancel")


def test_two_workers_and_a_bucket_run_three_priorities_including_a_ddp_job(fleet: Stack, dataset: dict) -> None:
    """The fleet in small: two CPU workers on their own disks, one S3 bucket; a low, a high and a 2-process job."""
    low = submit(fleet, dataset, steps=4, priority=0)
    ddp = submit(fleet, dataset, steps=4, priority=5, resources={"gpus": 2})
    high = submit(fleet, dataset, steps=4, priority=9)
    assert [get(fleet, j)["queue_position"] for j in (high, low, ddp)] == [1, 2, 1]  # ddp: first in its own queue
    start_worker(fleet, "worker-one", gpus=1)
    wait_until(lambda: get(fleet, high)["status"] != "queued", what="the 1-slot worker takes the high job first")
    start_worker(fleet, "worker-two", gpus=2)
    done = {j["id"]: fleet.wait(j["id"], timeout=300) for j in (low, ddp, high)}
    assert all(j["status"] == "succeeded" for j in done.values()), {i: j["error"] for i, j in done.items()}
    assert done[high["id"]]["started_at"] < done[low["id"]]["started_at"]
    assert f"job {ddp['id']}: training on 2 processes" in worker_log(fleet, "worker-two")
    for job in (low, ddp, high):
        listed = fleet.client.get(f"/jobs/{job['id']}/artifacts").json()["data"]
        assert "adapter" in {a["kind"] for a in listed}
        for artifact in listed:  # every artifact comes back through the API, from the bucket
            response = fleet.client.get(artifact["download_url"], follow_redirects=True)
            assert response.status_code == 200 and len(response.content) == artifact["size_bytes"], artifact
    api_disk = fleet.local.log_dir.parent / "api-disk" / "jobs"
    assert not any((api_disk / j["id"]).exists() for j in (low, ddp, high)), "the API keeps no job files of its own"

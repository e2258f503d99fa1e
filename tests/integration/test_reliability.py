"""No job is lost or run twice: each scenario really kills, restarts or cuts a process of a private stack."""

import json
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import MODELS_DIR
from tests.integration.conftest import Stack, private_stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

CHAOS_ENV = {
    "FT_LEASE_SECONDS": "4",  # a dead worker is noticed within seconds, not minutes
    "FT_HEARTBEAT_SECONDS": "0.5",
    "FT_RECONCILE_EVERY_SECONDS": "1",
    "FT_MAX_ATTEMPTS": "3",
    "FT_VISIBILITY_TIMEOUT_S": "5",  # Redis redelivers unacked messages fast: jobs outlive it
}


@pytest.fixture(scope="module")
def chaos(tiny_model: Path, session_dir: Path) -> Iterator[Stack]:
    """A private stack (own Redis, SQLite) whose workers the tests start, kill and restart."""
    root = session_dir / "chaos"
    env = {**os.environ, **CHAOS_ENV, "FT_DATA_DIR": str(root / "data"), "FT_MODELS_DIR": str(MODELS_DIR)}
    env.pop("FT_DATABASE_URL", None)
    with private_stack("chaos", root, env) as stack:
        yield stack


@pytest.fixture
def dataset(chaos: Stack) -> Iterator[dict]:
    yield chaos.upload("quotes.jsonl", quotes_jsonl())
    for name in [n for n in chaos.local.processes if n.startswith("worker")]:
        chaos.local.stop_process(name)  # a failed test must not leave its worker to take the next test's job


def _wait_attempt(stack: Stack, job_id: str, attempt: int, timeout: float = 60) -> dict:
    """Wait until `attempt` has claimed the job. Polling for `queued` would race: a requeued job is
    picked up again within milliseconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.client.get(f"/jobs/{job_id}").json()
        if job["attempts"] >= attempt and job["status"] == "running" and job["worker"]:
            return job
        if job["status"] not in ("queued", "running"):
            raise AssertionError(f"job {job_id} ended {job['status']} before attempt {attempt}: {job['error']}")
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not start attempt {attempt} within {timeout}s")


def _submit(stack: Stack, dataset: dict, **training: object) -> dict:
    training = {"batch_size": 2, "checkpoint_every_steps": 10, "eval_fraction": 0.0, **training}
    response = stack.client.post("/jobs", json=qlora_spec(dataset["id"], **training))
    assert response.status_code == 201, response.text
    return response.json()


def _wait_step(stack: Stack, job_id: str, step: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.client.get(f"/jobs/{job_id}").json()
        if job["progress"]["step"] >= step or job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach step {step}")


def _assert_complete_curve(stack: Stack, job_id: str, total: int) -> None:
    train = stack.client.get(f"/jobs/{job_id}/metrics").json()["train"]
    assert [p["step"] for p in train] == list(range(1, total + 1)), "each step exactly once"
    adapters = [a for a in stack.client.get(f"/jobs/{job_id}/artifacts").json()["data"] if a["kind"] == "adapter"]
    assert len(adapters) == 1


def _events(stack: Stack, job_id: str) -> list[dict]:
    client = redis.Redis.from_url(stack.local.env["FT_REDIS_URL"], decode_responses=True)
    return [{"type": f["type"], **json.loads(f["data"])} for _, f in client.xrange(f"ft:job:{job_id}:events")]


def test_cancel_a_running_job_stops_within_seconds(chaos: Stack, dataset: dict) -> None:
    chaos.local.start_worker()
    job = _submit(chaos, dataset, max_steps=500)
    _wait_step(chaos, job["id"], 3)
    asked = time.monotonic()
    assert chaos.client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
    done = chaos.wait(job["id"], timeout=30)
    assert done["status"] == "cancelled" and time.monotonic() - asked < 15
    assert done["progress"]["step"] < 500 and chaos.client.get(f"/jobs/{job['id']}/metrics").json()["train"]
    time.sleep(3)  # never retried
    assert chaos.client.get(f"/jobs/{job['id']}").json()["attempts"] == 1
    chaos.local.stop_process("worker")


def _group_stopped(pgid: int) -> bool:
    """Whether every thread of every process in group `pgid` is stopped, or ended (Linux /proc)."""
    states = []
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        try:
            fields = task.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
        if int(fields[2]) == pgid:
            states.append(fields[0])
    return bool(states) and all(state in "tTZX" for state in states)  # stopped, or gone


def _freeze(stack: Stack, name: str) -> None:
    """SIGSTOP a process's whole group and wait until it is really stopped: nothing it writes can land after this."""
    stack.local.kill(name, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while not _group_stopped(stack.local.processes[name].pid):
        assert time.monotonic() < deadline, f"{name} did not stop"
        time.sleep(0.005)


def _checkpoint_steps(stack: Stack, job_id: str) -> list[int]:
    return sorted(c["step"] for c in stack.client.get(f"/jobs/{job_id}/checkpoints").json()["data"])


def _freeze_with_a_complete_checkpoint(stack: Stack, job_id: str, name: str, total: int) -> tuple[int, dict]:
    """Freeze worker `name` at a moment the API proves its newest listed checkpoint complete; return that step.

    A checkpoint is listed (recorded) before it is marked complete (worker/training/checkpoints.py), so the newest
    listed one may be half-done: a kill then resumes from the one before. The Trainer logs step N+1 only once
    checkpoint N's on_save has returned, marker written, so a recorded step past the newest listed checkpoint proves
    it complete; and as none is marked before it is listed, it is then the newest complete one. Frozen, the record
    cannot move between the reads or before the kill. Caught in between, the worker runs on a moment and is frozen
    again."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _freeze(stack, name)
        job = stack.client.get(f"/jobs/{job_id}").json()
        listed = _checkpoint_steps(stack, job_id)
        seen = {"step": job["progress"]["step"], "checkpoints": listed}
        assert job["status"] == "running" and job["progress"]["step"] < total, f"the job ran out before a kill: {seen}"
        if listed and job["progress"]["step"] > listed[-1]:
            assert listed == list(range(10, listed[-1] + 1, 10)), seen
            return listed[-1], seen
        stack.local.kill(name, signal.SIGCONT)
        time.sleep(random.uniform(0.05, 0.25))
    raise AssertionError(f"job {job_id}: never caught with its newest listed checkpoint complete")


def test_killed_worker_resumes_from_checkpoint(chaos: Stack, dataset: dict) -> None:
    """The chaos test: SIGKILL the whole worker at a random step of a 4-bit QLoRA job, then restart it.

    It must resume from exactly the newest checkpoint complete at the kill: not from scratch, not from an older one."""
    chaos.local.start_worker()
    job = _submit(chaos, dataset, max_steps=40)
    kill_at = random.randint(12, 28)  # room left before the last step, for the reporter's lag
    _wait_step(chaos, job["id"], kill_at)
    resumable, seen = _freeze_with_a_complete_checkpoint(chaos, job["id"], "worker", 40)
    chaos.local.kill("worker")  # parent and child, still frozen: no process left to report anything
    chaos.local.stop_process("worker")
    assert _checkpoint_steps(chaos, job["id"]) == seen["checkpoints"], "nothing was recorded after the freeze"
    assert chaos.client.get(f"/jobs/{job['id']}").json()["status"] == "running"
    requeued = chaos.wait(job["id"], timeout=30, until={"queued"})  # the lease expires; the reconciler requeues
    assert requeued["attempts"] == 1
    chaos.local.start_worker()
    done = chaos.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    _assert_complete_curve(chaos, job["id"], 40)
    checkpoints = [
        a["step"] for a in chaos.client.get(f"/jobs/{job['id']}/artifacts").json()["data"] if a["kind"] == "checkpoint"
    ]
    assert checkpoints == [10, 20, 30, 40]
    listed = chaos.client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step"] for c in listed] == checkpoints and chaos.client.get(listed[0]["download_url"]).status_code == 200
    resumed = [e for e in _events(chaos, job["id"]) if e["type"] == "status" and e.get("resumed_from_step")]
    assert resumed and resumed[0]["resumed_from_step"] == resumable, (kill_at, seen, resumed)
    chaos.local.stop_process("worker")


def test_child_killed_by_oom_killer_is_retried_then_failed(chaos: Stack, dataset: dict) -> None:
    chaos.local.start_worker()
    job = _submit(chaos, dataset, max_steps=400)
    for attempt in (1, 2, 3):
        running = _wait_attempt(chaos, job["id"], attempt)
        assert running["attempts"] == attempt
        child_pid = int(running["worker"].rsplit(":", 1)[1])
        os.kill(child_pid, signal.SIGKILL)  # what the kernel's OOM killer does to the training process
    failed = chaos.wait(job["id"], timeout=30)
    assert failed["status"] == "failed" and failed["error"]["type"] == "worker_lost"
    assert "3 attempts" in failed["error"]["message"]
    chaos.local.stop_process("worker")


def test_sigterm_checkpoints_requeues_and_another_worker_resumes(chaos: Stack, dataset: dict) -> None:
    chaos.local.start_worker("worker")
    job = _submit(chaos, dataset, max_steps=40, checkpoint_every_steps=100)
    _wait_step(chaos, job["id"], 5)
    chaos.local.kill("worker", signal.SIGTERM)
    chaos.local.processes["worker"].wait(60)  # it exits by itself once the job is checkpointed
    queued = chaos.client.get(f"/jobs/{job['id']}").json()
    assert queued["status"] == "queued", queued
    drained_at = queued["progress"]["step"]
    chaos.local.start_worker("worker-b")
    done = chaos.wait(job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 2
    _assert_complete_curve(chaos, job["id"], 40)
    resumed = [e for e in _events(chaos, job["id"]) if e["type"] == "status" and e.get("resumed_from_step")]
    assert resumed[0]["resumed_from_step"] == drained_at
    chaos.local.stop_process("worker-b")


def _a_finished_job(stack: Stack, dataset: dict) -> dict:
    """A succeeded job of this stack: one the module's earlier tests left, else one trained now (run alone)."""
    finished = stack.client.get("/jobs", params={"status": "succeeded"}).json()["data"]
    if finished:
        return finished[0]
    stack.local.start_worker()
    job = _submit(stack, dataset, max_steps=3)
    assert stack.wait(job["id"])["status"] == "succeeded"
    stack.local.stop_process("worker")
    return job


def test_redis_restart_loses_no_queued_job_and_no_metrics(chaos: Stack, dataset: dict) -> None:
    finished = _a_finished_job(chaos, dataset)
    before = chaos.client.get(f"/jobs/{finished['id']}/metrics").json()
    job = _submit(chaos, dataset, max_steps=5)  # no worker is running: it waits in the broker
    port = int(chaos.local.env["FT_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    chaos.local.stop_process("redis")  # without persistence: the queued message is gone
    chaos.local.start_redis(port)
    assert chaos.client.get(f"/jobs/{finished['id']}/metrics").json() == before  # SQL is the record
    chaos.local.start_worker()
    done = chaos.wait(job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1
    chaos.local.stop_process("worker")


def test_api_restart_changes_nothing_for_a_running_job(chaos: Stack, dataset: dict) -> None:
    chaos.local.start_worker()
    job = _submit(chaos, dataset, max_steps=40)
    _wait_step(chaos, job["id"], 3)
    chaos.local.kill("api")
    chaos.local.stop_process("api")
    time.sleep(2)
    chaos.local.start_api()
    done = chaos.wait(job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1
    _assert_complete_curve(chaos, job["id"], 40)
    chaos.local.stop_process("worker")


def test_redelivered_message_never_starts_a_second_copy(chaos: Stack, dataset: dict) -> None:
    """Two workers; the job outlives the broker's visibility timeout, so Redis hands its message out again."""
    chaos.local.start_worker("worker-a")
    chaos.local.start_worker("worker-b")
    job = _submit(chaos, dataset, max_steps=150)  # ~9 s on an idle 2-core box: well past the 5 s timeout
    done = chaos.wait(job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1
    logs = "".join((chaos.local.log_dir / f"{n}.log").read_text() for n in ("worker-a", "worker-b"))
    assert len(re.findall(rf"job {job['id']}: attempt \d", logs)) == 1
    assert f"job {job['id']} is not claimable" in logs, "the message was redelivered and refused"
    _assert_complete_curve(chaos, job["id"], 150)
    chaos.local.stop_process("worker-a")
    chaos.local.stop_process("worker-b")


def test_out_of_memory_halves_the_micro_batch(chaos: Stack, dataset: dict) -> None:
    chaos.local.start_worker(extra_env={"FT_FAULT_OOM_ABOVE_BATCH_SIZE": "1"})
    job = _submit(chaos, dataset, max_steps=4, batch_size=4, gradient_accumulation_steps=1)
    done = chaos.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["spec"]["training"]["batch_size"] == 1
    assert done["spec"]["training"]["gradient_accumulation_steps"] == 4  # same effective batch
    warnings = [e["message"] for e in _events(chaos, job["id"]) if e["type"] == "warning"]
    assert len(warnings) == 2 and "out of GPU memory at micro-batch 4" in warnings[0]
    chaos.local.stop_process("worker")

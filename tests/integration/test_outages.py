"""Short outages are ridden out, longer ones requeue: PostgreSQL, Redis and S3 really stopped under a running job.

One private stack for the module (tests/private_services.py): its own PostgreSQL cluster, its own Redis (with an
append-only file, as production's), a moto S3 server behind a TCP gate, the API and one worker. Nothing shared with
the other tests is ever stopped. Each test prints what its fault cost against a run without one (FIGURE lines,
`pytest -s`); docs/operations.md "Outages" quotes them.
"""

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from ftctl.localstack import LocalStack
from tests.conftest import MODELS_DIR
from tests.integration.conftest import TERMINAL, Stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl
from tests.private_services import PrivatePostgres, PrivateRedis, TcpGate
from tests.s3_server import moto_server

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

LEASE_S = 15
OUTAGE_ENV = {
    "FT_LEASE_SECONDS": str(LEASE_S),
    "FT_HEARTBEAT_SECONDS": "1",
    "FT_RECONCILE_EVERY_SECONDS": "1",
    "FT_MAX_ATTEMPTS": "3",
}
STEPS = 30  # ~2 s of training on an idle 2-core box, minutes on a busy one: an outage may outlast training, and
# then the job's last writes wait for the service instead
SHORT_OUTAGE_S = 8  # about half the lease
LONG_OUTAGE_S = LEASE_S + 5
S3_OUTAGE_S = 30
wall_times: dict[str, float] = {}


@dataclass
class Outages:
    stack: Stack
    postgres: PrivatePostgres
    redis: PrivateRedis
    s3_gate: TcpGate

    def log(self) -> str:
        return (self.stack.local.log_dir / "worker.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def outages(tiny_model: Path, session_dir: Path) -> Iterator[Outages]:
    root = session_dir / "outages"
    postgres, private_redis = PrivatePostgres(), PrivateRedis()
    local, gate = None, None
    try:
        postgres.init()
        private_redis.start()
        with moto_server(root / "logs") as s3:
            gate = TcpGate(int(s3.endpoint_url.rsplit(":", 1)[1])).open()
            env = {
                **os.environ,
                **OUTAGE_ENV,
                **s3.env(s3.make_bucket()),
                "FT_S3_ENDPOINT_URL": gate.url,  # the service reaches S3 through the gate only
                "FT_DATA_DIR": str(root / "data"),
                "FT_MODELS_DIR": str(MODELS_DIR),
                "FT_DATABASE_URL": postgres.url,
                "FT_REDIS_URL": private_redis.url,
            }
            local = LocalStack(env=env, log_dir=root / "logs")
            local.start()
            probe = Stack("outages", local, "", httpx.Client())
            key = probe.make_key("outages")
            yield Outages(Stack("outages", local, key, probe.client_for(key)), postgres, private_redis, gate)
            local.stop()  # while S3 is reachable: a draining worker uploads its checkpoint
    finally:
        if local is not None:
            local.stop()
        if gate is not None:
            gate.close()
        private_redis.destroy()
        postgres.destroy()


@pytest.fixture(scope="module")
def dataset(outages: Outages) -> dict:
    return outages.stack.upload("quotes.jsonl", quotes_jsonl())


def _job(stack: Stack, job_id: str) -> dict | None:
    """The job as the API shows it; None while the API cannot answer (its database is away)."""
    try:
        response = stack.client.get(f"/jobs/{job_id}", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _wait_for(stack: Stack, job_id: str, done: Callable[[dict], bool], timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(stack, job_id)
        if job is not None and done(job):
            return job
        time.sleep(0.1)
    tail = (stack.local.log_dir / "worker.log").read_text(errors="replace")[-4000:]
    raise AssertionError(f"job {job_id}: {what} not seen within {timeout}s; worker log tail:\n{tail}")


def _submit(stack: Stack, dataset: dict, **training: object) -> tuple[dict, float]:
    training = {"max_steps": STEPS, "batch_size": 2, "eval_fraction": 0.0, "checkpoint_every_steps": None, **training}
    response = stack.client.post("/jobs", json=qlora_spec(dataset["id"], **training))
    assert response.status_code == 201, response.text
    return response.json(), time.monotonic()


def _finished(stack: Stack, job_id: str, timeout: float = 900) -> dict:
    return _wait_for(stack, job_id, lambda j: j["status"] in TERMINAL, timeout, "a final status")


def _train_steps(stack: Stack, job_id: str) -> list[int]:
    return [p["step"] for p in stack.client.get(f"/jobs/{job_id}/metrics").json()["train"]]


def _stream(outages: Outages, job_id: str) -> list[dict]:
    client = redis.Redis.from_url(outages.redis.url, decode_responses=True)
    return [{"type": f["type"], **json.loads(f["data"])} for _, f in client.xrange(f"ft:job:{job_id}:events")]


def _figure(name: str, seconds: float, outage_s: float | None = None) -> None:
    wall_times[name] = seconds
    base = wall_times.get("no fault")
    cost = f", {seconds - base:+.1f} s against no fault" if base is not None and name != "no fault" else ""
    outage = f" ({outage_s:.0f} s outage)" if outage_s else ""
    print(f"FIGURE {name}{outage}: job wall time {seconds:.1f} s{cost}")


def test_a_job_without_faults(outages: Outages, dataset: dict) -> None:
    """The yardstick for what each fault costs (and a check that the private stack trains at all)."""
    job, submitted = _submit(outages.stack, dataset)
    done = _finished(outages.stack, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done["error"]
    assert _train_steps(outages.stack, job["id"]) == list(range(1, STEPS + 1))
    _figure("no fault", time.monotonic() - submitted)


def test_short_postgres_outage_is_ridden_out(outages: Outages, dataset: dict) -> None:
    stack = outages.stack
    job, submitted = _submit(stack, dataset)
    before = _wait_for(stack, job["id"], lambda j: j["progress"]["step"] >= 3, 300, "step 3")
    outages.postgres.stop()
    time.sleep(SHORT_OUTAGE_S)
    outages.postgres.start()
    back = _wait_for(stack, job["id"], lambda j: j["progress"]["step"] > before["progress"]["step"], 30, "progress")
    assert back["attempts"] == 1, "the worker trained on through the outage"
    done = _finished(stack, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1, "ridden out, not restarted"
    assert _train_steps(stack, job["id"]) == list(range(1, STEPS + 1)), "every step's point exactly once"
    log = outages.log()
    assert f"job {job['id']}: database unreachable" in log
    stored = [
        int(n) for n in re.findall(rf"job {job['id']}: database back after [\d.]+ s: lease renewed, (\d+) points", log)
    ]
    assert stored and stored[0] > 0, "points made during the outage waited in memory and were stored once it ended"
    _figure("PostgreSQL away", time.monotonic() - submitted, SHORT_OUTAGE_S)


def test_postgres_outage_longer_than_the_lease_requeues_and_resumes(outages: Outages, dataset: dict) -> None:
    stack = outages.stack
    job, submitted = _submit(stack, dataset, max_steps=60, checkpoint_every_steps=10)
    checkpointed = lambda j: j["progress"]["step"] >= 12  # noqa: E731 - checkpoint 10 is recorded before step 11
    _wait_for(stack, job["id"], checkpointed, 600, "step 12")
    outages.postgres.stop()
    time.sleep(LONG_OUTAGE_S)
    outages.postgres.start()
    done = _finished(stack, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2, "the lease ran out: requeued and run again"
    assert _train_steps(stack, job["id"]) == list(range(1, 61)), "no step twice, none missing"
    resumed = [e for e in _stream(outages, job["id"]) if e["type"] == "status" and e.get("resumed_from_step")]
    assert resumed and resumed[0]["resumed_from_step"] >= 10, "resumed from a checkpoint, not from scratch"
    assert "stopping this copy" in outages.log()
    _figure("PostgreSQL away longer than the lease", time.monotonic() - submitted, LONG_OUTAGE_S)


def test_short_redis_outage_is_ridden_out(outages: Outages, dataset: dict) -> None:
    stack = outages.stack
    job, submitted = _submit(stack, dataset)
    _wait_for(stack, job["id"], lambda j: j["progress"]["step"] >= 3, 300, "step 3")
    outages.redis.stop()
    time.sleep(SHORT_OUTAGE_S)
    outages.redis.start()
    done = _finished(stack, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done["error"]
    assert _train_steps(stack, job["id"]) == list(range(1, STEPS + 1))
    # The record says succeeded as soon as SQL has it; the buffered live events follow once Redis answers again,
    # ahead of the final status event (the outbox keeps their order), so the stream is whole when that arrives.
    deadline = time.monotonic() + 60
    while not any(e.get("status") == "succeeded" for e in _stream(outages, job["id"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    metric_steps = [e["step"] for e in _stream(outages, job["id"]) if e["type"] == "metric"]
    assert metric_steps == list(range(1, STEPS + 1)), "live events buffered, then sent in order, each once"
    assert [e["status"] for e in _stream(outages, job["id"]) if e["type"] == "status"] == ["running", "succeeded"]
    assert f"job {job['id']}: Redis unreachable" in outages.log()
    _figure("Redis away", time.monotonic() - submitted, SHORT_OUTAGE_S)
    # The worker's own broker connection came back: it takes the next job.
    follow_up, _ = _submit(stack, dataset, max_steps=2)
    assert _finished(stack, follow_up["id"])["status"] == "succeeded"


def test_s3_outage_during_the_adapter_upload_is_retried(outages: Outages, dataset: dict) -> None:
    stack = outages.stack
    job, submitted = _submit(stack, dataset)
    # Cut S3 once training has a few seconds left (by its ETA: steps take 0.1 s on an idle box, seconds on a busy
    # one), so the adapter upload falls inside the outage.
    near_the_end = lambda j: j["progress"]["step"] >= 3 and (j["progress"]["eta_seconds"] or 99) <= 8  # noqa: E731
    _wait_for(stack, job["id"], near_the_end, 600, "the last seconds of training")
    outages.s3_gate.close()
    closed_at = time.monotonic()
    upload = f"S3 endpoint unreachable while uploading jobs/{job['id']}/adapter.tar.gz"
    deadline = closed_at + S3_OUTAGE_S - 2
    while upload not in outages.log():
        assert time.monotonic() < deadline, "the adapter upload did not start while S3 was away"
        time.sleep(0.2)
    assert _job(stack, job["id"])["status"] == "running", "it waits for the store, neither failed nor requeued"
    time.sleep(max(0.0, closed_at + S3_OUTAGE_S - time.monotonic()))
    outages.s3_gate.open()
    done = _finished(stack, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done["error"]
    download = stack.client.get(f"/jobs/{job['id']}/artifacts/adapter")
    assert download.status_code == 200 and len(download.content) > 1000
    _figure("S3 away during the adapter upload", time.monotonic() - submitted, S3_OUTAGE_S)

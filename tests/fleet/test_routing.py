"""Fleet parsing with GPU counts, queue names, refusals of jobs no machine can run, and queue positions."""

import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app.broker.queue import broker_priority, celery_config
from app.core.config import settings
from app.core.db import SessionLocal
from app.fleet.gpu_classes import CPU, parse_fleet, parse_machines
from app.fleet.routing import fleet_refusal, training_queue_for, worker_queues
from app.jobs.service import queue_position
from app.main import create_app
from app.models import Job, utcnow
from app.spec.job import JobSpec, Resources
from app.tenants.auth import create_key

ROOT = Path(__file__).resolve().parents[2]
FLEET = "A10,RTX4090:24*2,A100-80GB*4,cpu*2"


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", FLEET)
    monkeypatch.setattr(settings, "training_queue", "training")


def test_parse_fleet_takes_gpus_per_machine_and_keeps_old_values() -> None:
    machines = parse_machines(FLEET)
    assert [(m.gpu.name, m.gpu.memory_gib, m.gpus) for m in machines] == [
        ("A10", 22.5, 1),
        ("RTX4090", 24.0, 2),
        ("A100-80GB", 80.0, 4),
        ("cpu", None, 2),
    ]
    assert [m.describe() for m in machines] == ["A10", "RTX4090*2", "A100-80GB*4", "cpu*2"]
    assert parse_fleet(FLEET)[-1] == CPU
    assert [g.name for g in parse_fleet("a10, A100-80GB ,cpu")] == ["A10", "A100-80GB", "cpu"]
    for bad in ("A10*0", "A10*65", "A10*two", "RTX4090:lots*2"):
        with pytest.raises(ValueError, match="FT_FLEET_GPUS"):
            parse_machines(bad)


def test_spec_resources_and_priority_have_defaults_and_bounds() -> None:
    spec = JobSpec(base_model="tiny", dataset="ds_x")
    assert spec.resources == Resources(gpus=1, min_gpu_memory_gb=None) and spec.priority == 0
    for bad in ({"resources": {"gpus": 0}}, {"resources": {"gpus": 65}}, {"priority": 10}, {"priority": -1}):
        with pytest.raises(ValueError):
            JobSpec(base_model="tiny", dataset="ds_x", **bad)


@pytest.mark.usefixtures("fleet")
def test_queue_names_round_memory_up_to_the_fleets_tiers() -> None:
    assert training_queue_for(Resources()) == "training"  # any worker: the queue every worker consumes
    assert training_queue_for(Resources(gpus=2)) == "training.g2"
    assert training_queue_for(Resources(min_gpu_memory_gb=23)) == "training.g1.m24"
    assert training_queue_for(Resources(gpus=4, min_gpu_memory_gb=40)) == "training.g4.m80"
    assert training_queue_for(Resources(min_gpu_memory_gb=10)) == "training.g1.m22.5"


@pytest.mark.usefixtures("fleet")
def test_a_worker_consumes_exactly_the_queues_of_the_jobs_it_can_run() -> None:
    assert worker_queues(1, None) == ["training"]
    assert worker_queues(2, None) == ["training.g2", "training"]  # a CPU box: no GPU memory floor served
    assert worker_queues(2, 24) == [
        "training.g2.m24",
        "training.g2.m22.5",
        "training.g2",
        "training.g1.m24",
        "training.g1.m22.5",
        "training",
    ]
    for gpus, memory in ((1, None), (2, None), (1, 22.5), (2, 24.0), (4, 80.0), (8, 141.0)):
        served = set(worker_queues(gpus, memory))
        for wanted_gpus in (1, 2, 4, 8):
            for wanted_memory in (None, 10.0, 22.5, 23.0, 40.0, 80.0):
                can = wanted_gpus <= gpus and (wanted_memory is None or (memory or 0) >= wanted_memory)
                queue = training_queue_for(Resources(gpus=wanted_gpus, min_gpu_memory_gb=wanted_memory))
                assert (queue in served) == can, (gpus, memory, wanted_gpus, wanted_memory, queue)


def test_priority_9_is_served_first_by_redis() -> None:
    assert [broker_priority(p) for p in (9, 5, 0)] == [0, 4, 9]  # kombu's Redis transport: 0 comes out first
    transport = celery_config()["broker_transport_options"]
    assert transport["priority_steps"] == list(range(10)) and transport["queue_order_strategy"] == "priority"


@pytest.mark.usefixtures("fleet")
def test_refusals_name_the_ask_the_fleet_and_the_fix() -> None:
    assert fleet_refusal(Resources(gpus=4, min_gpu_memory_gb=80)) is None
    assert fleet_refusal(Resources(gpus=2)) is None
    field, message = fleet_refusal(Resources(gpus=8))
    assert field == "resources.gpus"
    assert "asks for 8 GPU(s) on one machine" in message and "A100-80GB*4 (80 GiB)" in message
    assert "FT_FLEET_GPUS" in message and "lower resources.gpus to at most 4" in message
    field, message = fleet_refusal(Resources(min_gpu_memory_gb=100))
    assert field == "resources.min_gpu_memory_gb" and "at most 80" in message
    assert fleet_refusal(Resources(gpus=2, min_gpu_memory_gb=80)) is None  # an A100 machine has 4 of 80 GiB


def test_a_machine_must_have_both_the_gpus_and_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", "A100-80GB,A10*4")
    field, message = fleet_refusal(Resources(gpus=4, min_gpu_memory_gb=40))
    assert field == "resources.gpus" and "lower resources.gpus to at most 1" in message
    assert "4 GPU(s) on one machine with at least 40 GiB each" in message


def test_an_undeclared_fleet_refuses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", "")
    assert fleet_refusal(Resources(gpus=64, min_gpu_memory_gb=4000)) is None


@pytest.fixture
def client() -> Iterator[TestClient]:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
    with SessionLocal() as session:
        key = create_key(session, "routing", tenant=f"routing-{secrets.token_hex(4)}")
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.usefixtures("fleet")
def test_submit_validate_and_openai_refuse_what_no_machine_has(
    monkeypatch: pytest.MonkeyPatch, client: TestClient
) -> None:
    spec = {"base_model": "tiny", "dataset": "ds_000000000000000000000000", "resources": {"gpus": 16}}
    for path in ("/jobs", "/jobs/validate"):
        refused = client.post(path, json=spec)
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert "16 GPU(s)" in body["detail"] and "FT_FLEET_GPUS" in body["detail"]
        assert body["problems"][0]["field"] == "resources.gpus"
    data = client.post("/datasets", files={"file": ("a.jsonl", b'{"prompt": "a", "completion": "b"}\n')}).json()
    overrides = {"resources": {"min_gpu_memory_gb": 200}}
    openai = client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": data["id"], "spec_overrides": overrides}
    )
    assert openai.status_code == 400, openai.text  # /v1 answers OpenAI's invalid_request_error, naming the param
    assert openai.json()["error"]["param"] == "resources.min_gpu_memory_gb" and "at most 80" in openai.text
    monkeypatch.setattr(settings, "fleet_gpus", "")
    unrouted = client.post("/jobs/validate", json=spec)
    assert "GPU(s)" not in unrouted.text  # fleet unknown: judged on its data only


def test_queue_position_counts_higher_priority_then_older_jobs_in_the_same_queue() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
    queue, other, now = f"q-{secrets.token_hex(4)}", f"q-{secrets.token_hex(4)}", utcnow()
    spec = {"base_model": "m", "dataset": "d"}

    def job(priority: int, seconds: int, where: str = queue, status: str = "queued") -> Job:
        created = now + timedelta(seconds=seconds)
        return Job(tenant="t", status=status, spec=spec, queue=where, priority=priority, created_at=created)

    with SessionLocal() as session:
        low, old_mid, mid, high = job(0, 0), job(5, 1), job(5, 2), job(9, 3)
        noise = [job(9, -5, where=other), job(9, -5, status="running"), job(9, -5, status="cancelled")]
        session.add_all([low, old_mid, mid, high, *noise])
        session.commit()
        assert [queue_position(session, j) for j in (high, old_mid, mid, low)] == [1, 2, 3, 4]
        assert queue_position(session, noise[0]) == 1 and queue_position(session, noise[1]) is None


def test_a_worker_declares_its_gpus_or_detects_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import celery_app

    monkeypatch.setattr(settings, "worker_gpus", 2)
    monkeypatch.setattr(settings, "worker_gpu_memory_gb", 0.0)  # 0: a CPU worker, no GPU memory to offer
    assert celery_app.declared_resources() == (2, None)
    monkeypatch.setattr(celery_app, "detected_gpus", lambda: (4, 79.6))
    monkeypatch.setattr(settings, "worker_gpus", None)
    monkeypatch.setattr(settings, "worker_gpu_memory_gb", None)
    assert celery_app.declared_resources() == (4, 79.6)
    monkeypatch.setattr(celery_app, "detected_gpus", lambda: (0, None))
    assert celery_app.declared_resources() == (1, None)  # no GPU: one CPU slot
    names = [q.name for q in celery_app.training_queues()]
    assert names[-1] == settings.training_queue and all(q.routing_key == q.name for q in celery_app.training_queues())

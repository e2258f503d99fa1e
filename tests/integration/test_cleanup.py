"""Know the cost before queueing, clean up after, on the real stack: the estimate in POST /jobs/validate and on
the job, refusal and auto-fit, DELETE of datasets and jobs (a running one too), GET /usage and the retention sweep."""

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.models import Dataset, Job, utcnow
from ftctl.localstack import LocalStack
from tests.conftest import MODELS_DIR
from tests.integration.conftest import Stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl

# Llama-3.1-405B's and Llama-2-70B's shapes: only config.json is read before queueing.
HUGE = {"model_type": "llama", "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126}
HUGE.update(num_attention_heads=128, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
LARGE = {**HUGE, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64}


def short(dataset_id: str, **training: object) -> dict:
    """A job of a few steps: no eval, small batches."""
    return qlora_spec(dataset_id, **{"max_steps": 3, "batch_size": 2, "eval_fraction": 0.0, **training})


def data_dir(stack: Stack) -> Path:
    return Path(stack.local.env["FT_DATA_DIR"]).resolve()


def stack_session(stack: Stack) -> Session:
    env = stack.local.env
    return Session(make_engine(env.get("FT_DATABASE_URL") or f"sqlite:///{data_dir(stack) / 'finetune.db'}"))


def eventually(check: Callable[[], bool], timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.3)


def shaped_model(name: str, config: dict, tiny_model: Path) -> str:
    """A model directory with a big model's config.json, the tiny tokenizer and no real weights."""
    path = MODELS_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model / file).exists():
            shutil.copy(tiny_model / file, path / file)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"not weights: this model is only estimated, never trained")
    return name


@pytest.fixture(scope="module")
def tenant(stack: Stack) -> Iterator[Stack]:
    """A tenant of its own, so usage and deletes see only this module's things."""
    key = stack.make_key(f"cleanup-{stack.name}", tenant=f"cleanup-{stack.name}")
    client = stack.client_for(key)
    yield Stack(stack.name, stack.local, key, client)
    client.close()


def test_validate_estimates_and_the_job_keeps_it(tenant: Stack) -> None:
    dataset = tenant.upload("quotes.jsonl", quotes_jsonl(4))
    report = tenant.client.post("/jobs/validate", json=short(dataset["id"])).json()
    est = report["estimate"]
    assert report["ok"] and est["fits"] and est["total_steps"] == 3 and est["trainable_parameters"] > 0
    assert est["memory"]["peak_bytes"] > est["memory"]["weights_bytes"] > 0 and est["duration_seconds"] > 0
    assert {g["gpu"] for g in est["gpus"]} >= {"T4", "A100-80GB", "H100"} and "not configured" in est["fleet"]
    job = tenant.client.post("/jobs", json=short(dataset["id"])).json()
    assert job["estimate"]["memory"] == est["memory"]
    assert tenant.wait(job["id"])["status"] == "succeeded"


def test_a_job_that_fits_no_gpu_is_refused_with_the_numbers(tenant: Stack, tiny_model: Path) -> None:
    dataset = tenant.upload("quotes.jsonl", quotes_jsonl(4))
    spec = {**short(dataset["id"]), "base_model": shaped_model("llama-405b-shape", HUGE, tiny_model)}
    refused = tenant.client.post("/jobs", json=spec)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["problems"][0]["field"] == "base_model" and "its weights alone do not fit" in body["detail"]
    assert "H200, has 140.4 GiB" in body["detail"] and body["estimate"]["memory"]["weights_bytes"] > 150 * 2**30
    assert tenant.client.get("/jobs", params={"status": "queued"}).json()["data"] == []


def test_a_too_large_micro_batch_is_fitted_not_refused(tenant: Stack, tiny_model: Path) -> None:
    dataset = tenant.upload("quotes.jsonl", quotes_jsonl(4))
    training = {"batch_size": 64, "packing": True, "max_seq_length": 4096}  # 773 GiB at 64: fits at 8 x 8
    spec = {**short(dataset["id"], **training), "base_model": shaped_model("llama-70b-shape", LARGE, tiny_model)}
    report = tenant.client.post("/jobs/validate", json=spec).json()
    assert report["ok"] and report["estimate"]["adjusted"] and "same effective batch" in report["warnings"][-1]
    job = tenant.client.post("/jobs", json=spec).json()
    ran = job["spec"]["training"]
    assert ran["batch_size"] < 64 and ran["batch_size"] * ran["gradient_accumulation_steps"] == 64
    assert job["estimate"]["batch_size"] == ran["batch_size"] and job["estimate"]["adjusted"]
    deleted = tenant.client.delete(f"/jobs/{job['id']}")  # it has no weights to train: gone before it runs far
    assert deleted.status_code == 200 and tenant.client.get(f"/jobs/{job['id']}").status_code == 404


def test_delete_a_dataset(tenant: Stack, stack: Stack) -> None:
    dataset = tenant.upload("quotes.jsonl", quotes_jsonl(5))
    stored = data_dir(tenant) / "datasets" / dataset["id"]
    job = tenant.client.post("/jobs", json=short(dataset["id"], max_steps=300)).json()
    busy = tenant.client.delete(f"/datasets/{dataset['id']}")
    assert busy.status_code == 409 and job["id"] in busy.json()["detail"]
    assert stack.client.delete(f"/datasets/{dataset['id']}").status_code == 404  # another tenant's
    tenant.client.post(f"/jobs/{job['id']}/cancel")
    tenant.wait(job["id"])
    deleted = tenant.client.delete(f"/datasets/{dataset['id']}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["freed_bytes"] > 0 and not stored.exists()
    assert tenant.client.get(f"/datasets/{dataset['id']}").status_code == 404
    assert tenant.client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"  # the job's record stays


def test_delete_a_running_job(tenant: Stack) -> None:
    dataset = tenant.upload("quotes.jsonl", quotes_jsonl(6))
    job = tenant.client.post("/jobs", json=short(dataset["id"], max_steps=500, checkpoint_every_steps=10)).json()
    eventually(lambda: tenant.client.get(f"/jobs/{job['id']}").json()["progress"]["step"] >= 2, what="step 2")
    deleted = tenant.client.delete(f"/jobs/{job['id']}").json()
    assert deleted == {**deleted, "id": job["id"], "deleted": True, "cancelled": True, "kept_metrics": False}
    assert tenant.client.get(f"/jobs/{job['id']}").status_code == 404
    assert tenant.client.get(f"/jobs/{job['id']}/metrics").status_code == 404
    job_dir = data_dir(tenant) / "jobs" / job["id"]
    eventually(lambda: not job_dir.exists(), what="the worker discarding the deleted job's files")
    log = tenant.local.log_dir / "worker.log"
    eventually(lambda: f"job {job['id']}: deleted while it ran" in log.read_text(), what="the worker's log line")
    after = tenant.client.post("/jobs", json=short(dataset["id"])).json()  # the worker is free and well
    assert tenant.wait(after["id"])["status"] == "succeeded"


def test_delete_a_finished_job_keeping_its_metrics(tenant: Stack) -> None:
    dataset = tenant.upload("quotes.jsonl", quotes_jsonl(7))
    job = tenant.client.post("/jobs", json=short(dataset["id"], max_steps=4, checkpoint_every_steps=2)).json()
    assert tenant.wait(job["id"])["status"] == "succeeded"
    names = {a["name"] for a in tenant.client.get(f"/jobs/{job['id']}/artifacts").json()["data"]}
    assert names == {"adapter", "checkpoint-2", "checkpoint-4"}
    kept = tenant.client.delete(f"/jobs/{job['id']}", params={"keep_metrics": "true"}).json()
    assert kept["kept_metrics"] and not kept["cancelled"] and kept["freed_bytes"] > 0
    assert not (data_dir(tenant) / "jobs" / job["id"]).exists()
    assert tenant.client.get(f"/jobs/{job['id']}").json()["artifacts_deleted_at"] is not None
    assert len(tenant.client.get(f"/jobs/{job['id']}/metrics").json()["train"]) == 4
    assert tenant.client.get(f"/jobs/{job['id']}/artifacts").json()["data"] == []
    gone = tenant.client.get(f"/jobs/{job['id']}/artifacts/adapter")
    assert gone.status_code == 409 and "deleted" in gone.json()["detail"]
    assert tenant.client.delete(f"/jobs/{job['id']}").status_code == 200
    assert tenant.client.get(f"/jobs/{job['id']}").status_code == 404


def test_usage(tenant: Stack, stack: Stack) -> None:
    # A trained job of its own: what the module's other tests left behind depends on the order they ran in.
    dataset = tenant.upload("quotes.jsonl", quotes_jsonl(4))
    trained = tenant.client.post("/jobs", json=short(dataset["id"], max_steps=1)).json()
    assert tenant.wait(trained["id"])["status"] == "succeeded"
    usage = tenant.client.get("/usage").json()
    jobs = tenant.client.get("/jobs", params={"limit": 500}).json()["data"]
    assert usage["tenant"] == f"cleanup-{tenant.name}"
    assert usage["jobs"] == len(jobs) and usage["jobs_by_status"] == dict(Counter(j["status"] for j in jobs))
    assert usage["jobs_by_status"]["succeeded"] >= 1
    assert usage["datasets"] == len(tenant.client.get("/datasets").json()["data"]) > 0
    storage = usage["storage_bytes"]
    assert (
        storage["datasets"] > 0
        and storage["adapters"] > 0
        and storage["total"] == sum(storage[k] for k in ("datasets", "checkpoints", "adapters", "merged"))
    )
    assert usage["cpu_hours"] > 0 and usage["gpu_hours"] == 0  # the test workers have no GPU
    assert stack.client.get("/usage", params={"tenant": usage["tenant"]}).status_code == 403  # not an admin
    argv = [sys.executable, "-m", "ftctl.main", "keys", "create", f"ops-{stack.name}", "--admin"]
    admin_key = subprocess.run(argv, env=stack.local.env, check=True, capture_output=True, text=True)
    admin = stack.client_for(admin_key.stdout.strip().splitlines()[-1])
    assert admin.get("/usage", params={"tenant": usage["tenant"]}).json()["jobs"] == usage["jobs"]


@pytest.fixture
def sweeper(stack: Stack) -> Iterator[LocalStack]:
    """A second API process on the same database and files with retention on; its sweep runs every second."""
    retention = {
        "FT_RETENTION_SWEEP_EVERY_SECONDS": "1",
        "FT_RETENTION_KEEP_LAST_CHECKPOINTS": "1",
        "FT_RETENTION_DATASET_DAYS": "5",
        "FT_RETENTION_ARTIFACT_DAYS": "5",
        "FT_RECONCILE_EVERY_SECONDS": "0",
    }
    local = LocalStack(env={**stack.local.env, **retention}, log_dir=stack.local.log_dir / "sweeper")
    local.log_dir.mkdir(parents=True, exist_ok=True)
    local.start_api()
    yield local
    local.stop()


def test_retention_sweep(tenant: Stack, sweeper: LocalStack) -> None:
    old_data, new_data = tenant.upload("old.jsonl", quotes_jsonl(8)), tenant.upload("new.jsonl", quotes_jsonl(9))
    spec = short(new_data["id"], max_steps=3, checkpoint_every_steps=1)
    kept, expired = (tenant.client.post("/jobs", json=spec).json() for _ in range(2))
    for job in (kept, expired):
        assert tenant.wait(job["id"])["status"] == "succeeded"
    ten_days_ago = utcnow() - timedelta(days=10)
    with stack_session(tenant) as session:
        session.execute(update(Dataset).where(Dataset.id == old_data["id"]).values(created_at=ten_days_ago))
        session.execute(update(Job).where(Job.id == expired["id"]).values(finished_at=ten_days_ago))
        session.commit()

    def names(job_id: str) -> set[str]:
        return {a["name"] for a in tenant.client.get(f"/jobs/{job_id}/artifacts").json()["data"]}

    eventually(lambda: names(kept["id"]) == {"adapter", "checkpoint-3"}, what="only the last checkpoint kept")
    eventually(lambda: tenant.client.get(f"/datasets/{old_data['id']}").status_code == 404, what="dataset expiry")
    eventually(lambda: names(expired["id"]) == set(), what="artifact expiry")
    assert tenant.client.get(f"/jobs/{expired['id']}").json()["artifacts_deleted_at"] is not None
    assert not (data_dir(tenant) / "jobs" / expired["id"]).exists()
    assert not (data_dir(tenant) / "jobs" / kept["id"] / "checkpoints" / "checkpoint-1.tar.gz").exists()
    assert tenant.client.get(f"/datasets/{new_data['id']}").status_code == 200  # young: kept
    log = (sweeper.log_dir / "api.log").read_text()
    assert f"removed dataset {old_data['id']}" in log and f"removed the artifacts of job {expired['id']}" in log

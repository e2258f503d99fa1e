"""Experiment trackers on the real stack: a job logs to a real `mlflow server` (basic auth on, the tenant's secrets
as credentials) and to W&B in offline mode, every metric point as GET /jobs/{id}/metrics has it, the settings and
the adapter; a tracker that cannot log in costs a warning, not the job; no secret shows up anywhere."""

import io
import os
import secrets
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ONE_DATABASE, TERMINAL, Stack
from tests.integration.test_end_to_end import quotes_jsonl
from tests.mlflow_server import MlflowServer, running_mlflow_server  # noqa: F401 - the session fixture
from tests.wandb_offline import read_offline_run

pytestmark = ONE_DATABASE

# The stack fixture hands the test environment to the API and worker it starts; set before it does. Offline W&B
# needs no key and no network: runs are written under the job's directory.
os.environ.setdefault("FT_WANDB_MODE", "offline")
STEPS = 4


def admin_for(stack: Stack) -> httpx.Client:
    argv = [sys.executable, "-m", "ftctl.main", "keys", "create", "trackers-admin", "--tenant", "ops", "--admin"]
    out = subprocess.run(argv, env=stack.local.env, check=True, capture_output=True, text=True)
    return stack.client_for(out.stdout.strip().splitlines()[-1])


def wait(client: httpx.Client, job_id: str, timeout: float = 400) -> dict:
    """The job once it has ended and so have its tracker runs (which finish after its status is recorded), read as
    its own tenant (the stack's key is another tenant's: 404)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        runs = (job.get("lineage") or {}).get("integrations")
        if job["status"] in TERMINAL and runs and all(r["state"] in ("ended", "failed") for r in runs):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} or its tracker runs did not end within {timeout}s: {job}")


def tracked_spec(dataset_id: str, integrations: list[dict]) -> dict:
    return {
        "name": "tracked",
        "base_model": "tiny-llama",
        "dataset": dataset_id,
        "format": {"type": "template", "template": "{quote} ->: {tags}"},
        "quantization": None,
        "training": {"max_steps": STEPS, "batch_size": 4, "eval_fraction": 0.25, "eval_every_steps": 2},
        "integrations": integrations,
    }


def test_a_job_logs_params_every_point_and_the_adapter_to_mlflow_and_wandb(
    mlflow_server: MlflowServer, stack: Stack
) -> None:
    tenant = f"trk-{secrets.token_hex(4)}"
    user = stack.client_for(stack.make_key(tenant, tenant=tenant))
    admin = admin_for(stack)
    wandb_key = secrets.token_hex(20)  # set, though offline W&B never sends it: it must not show up either
    for name, value in [
        ("mlflow_tracking_username", mlflow_server.username),
        ("mlflow_tracking_password", mlflow_server.password),
        ("wandb_api_key", wandb_key),
    ]:
        assert admin.put(f"/admin/tenants/{tenant}/secrets/{name}", json={"value": value}).status_code == 200
    dataset = user.post("/datasets", files={"file": ("q.jsonl", quotes_jsonl(4))}).json()
    experiment = f"exp-{secrets.token_hex(3)}"
    integrations = [
        {"type": "mlflow", "mlflow": {"tracking_uri": mlflow_server.url, "experiment": experiment}},
        {"type": "wandb", "wandb": {"project": "ft-tests", "tags": ["ci"]}},
    ]
    mlflow_server.ready()  # started before the stack (the fixture order above): the two start side by side
    submitted = user.post("/jobs", json=tracked_spec(dataset["id"], integrations))
    assert submitted.status_code == 201, submitted.text
    job = wait(user, submitted.json()["id"])
    assert job["status"] == "succeeded", job
    metrics = user.get(f"/jobs/{job['id']}/metrics").json()
    train, evals = metrics["train"], metrics["eval"]
    assert [p["step"] for p in train] == list(range(1, STEPS + 1)) and [p["step"] for p in evals] == [2, 4]

    runs = {r["type"]: r for r in job["lineage"]["integrations"]}
    assert set(runs) == {"mlflow", "wandb"} and all(r["state"] == "ended" for r in runs.values()), runs
    with mlflow_server.client() as client:
        run = client.get_run(runs["mlflow"]["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
        assert runs["mlflow"]["url"].endswith(f"/runs/{run.info.run_id}")
        params = run.data.params
        assert params["job_id"] == job["id"] and params["base_model"] == "tiny-llama"
        assert params["training.max_steps"] == str(STEPS) and params["method.type"] == "sft"
        loss = client.get_metric_history(run.info.run_id, "train/loss")
        assert [(m.step, m.value) for m in loss] == [(p["step"], pytest.approx(p["loss"])) for p in train]
        lr = client.get_metric_history(run.info.run_id, "train/learning_rate")
        assert [m.step for m in lr] == [p["step"] for p in train]
        eval_loss = client.get_metric_history(run.info.run_id, "eval/loss")
        assert [(m.step, m.value) for m in eval_loss] == [(p["step"], pytest.approx(p["eval_loss"])) for p in evals]
        files = {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= files
        local = client.download_artifacts(run.info.run_id, "adapter/adapter_config.json")
        assert '"peft_type"' in Path(local).read_text()

    wandb_dir = Path(stack.local.env["FT_DATA_DIR"]) / "jobs" / job["id"] / "wandb"
    (log_file,) = wandb_dir.glob("offline-run-*/run-*.wandb")
    offline = read_offline_run(log_file)
    assert offline.run_id == job["id"] and offline.project == "ft-tests" and offline.tags == ["ci"]
    assert offline.config["training"]["max_steps"] == STEPS and offline.config["base_model"] == "tiny-llama"
    logged = {row["_step"]: row for row in offline.history}
    assert sorted(logged) == [p["step"] for p in train]
    assert all(logged[p["step"]]["train/loss"] == pytest.approx(p["loss"]) for p in train)
    assert all(logged[p["step"]]["eval/loss"] == pytest.approx(p["eval_loss"]) for p in evals)
    ((name, kind, adapter_files),) = offline.artifacts
    assert kind == "model" and "adapter_model.safetensors" in adapter_files and offline.exit_code == 0

    # No secret anywhere a user or an operator reads: the job, its events, its adapter, the logs, the run files
    shown = [user.get(f"/jobs/{job['id']}").text, user.get(f"/jobs/{job['id']}/events").text]
    with tarfile.open(fileobj=io.BytesIO(user.get(f"/jobs/{job['id']}/artifacts/adapter").content)) as adapter:
        shown += [adapter.extractfile(m).read().decode(errors="replace") for m in adapter.getmembers() if m.isfile()]
        assert any("training_spec" in m.name for m in adapter.getmembers())
    shown += [p.read_text(errors="replace") for p in stack.local.log_dir.glob("*.log")]
    shown += [p.read_bytes().decode(errors="replace") for p in log_file.parent.rglob("*") if p.is_file()]
    for secret in (mlflow_server.password, wandb_key):
        assert not any(secret in text for text in shown)


def test_a_tracker_that_cannot_log_in_costs_a_warning_not_the_job(mlflow_server: MlflowServer, stack: Stack) -> None:
    tenant = f"trk-{secrets.token_hex(4)}"  # no mlflow_tracking_* secrets: the server answers 401
    user = stack.client_for(stack.make_key(tenant, tenant=tenant))
    dataset = user.post("/datasets", files={"file": ("q.jsonl", quotes_jsonl(4))}).json()
    spec = tracked_spec(dataset["id"], [{"type": "mlflow", "mlflow": {"tracking_uri": mlflow_server.url}}])
    spec["training"] = {"max_steps": 1, "batch_size": 4}
    mlflow_server.ready()
    submitted = user.post("/jobs", json=spec)
    assert submitted.status_code == 201, submitted.text
    job = wait(user, submitted.json()["id"])
    assert job["status"] == "succeeded", job
    (run,) = job["lineage"]["integrations"]
    assert run["type"] == "mlflow" and run["state"] == "failed" and "run_id" not in run
    assert "could not start its run" in run["error"] and "UNAUTHENTICATED" in run["error"]
    events = user.get(f"/jobs/{job['id']}/events").text
    assert "mlflow tracking could not start its run" in events and "training goes on" in events


def test_a_tracker_the_tenant_cannot_use_is_refused_at_submit(stack: Stack) -> None:
    tenant = f"trk-{secrets.token_hex(4)}"
    user = stack.client_for(stack.make_key(tenant, tenant=tenant))
    admin = admin_for(stack)
    set_user = admin.put(f"/admin/tenants/{tenant}/secrets/mlflow_tracking_username", json={"value": "u"})
    assert set_user.status_code == 200, set_user.text
    dataset = user.post("/datasets", files={"file": ("q.jsonl", quotes_jsonl(1))}).json()
    half = tracked_spec(dataset["id"], [{"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:9"}}])
    refused = user.post("/jobs", json=half)
    assert refused.status_code == 422 and "mlflow_tracking_password" in refused.text, refused.text
    assert f"/admin/tenants/{tenant}/secrets/mlflow_tracking_password" in refused.text
    private = tracked_spec(dataset["id"], [{"type": "mlflow", "mlflow": {"tracking_uri": "http://10.1.2.3:5000"}}])
    refused = user.post("/jobs", json=private)
    assert refused.status_code == 422 and "integrations.0.mlflow.tracking_uri" in refused.text
    assert "private address" in refused.text and "FT_EGRESS_ALLOW" in refused.text


def test_an_mlflow_run_resumes_ends_as_the_job_and_is_written_only_through_the_server(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from app.core.config import settings
    from app.core.egress import EgressRefused
    from app.spec.integrations import MlflowSettings
    from worker.trackers.mlflow_run import ArtifactRefused, MlflowRun

    job_id = "job_" + secrets.token_hex(12)
    experiment = f"resume-{secrets.token_hex(3)}"
    # As a spec checked where FT_EGRESS_ALLOW let loopback through; this process's is empty: the worker refuses it
    target = MlflowSettings.model_construct(tracking_uri=mlflow_server.ready().url, experiment=experiment)
    creds = {"mlflow_tracking_username": mlflow_server.username, "mlflow_tracking_password": mlflow_server.password}
    with pytest.raises(EgressRefused, match="loopback"):
        MlflowRun(target, creds, job_id, "r").start({}, resume=False)
    monkeypatch.setattr(settings, "egress_allow", "127.0.0.0/8")

    first, resumed = MlflowRun(target, creds, job_id, "r").start({"training.seed": "1"}, resume=False)
    assert not resumed
    second_run = MlflowRun(target, creds, job_id, "r")
    second, resumed = second_run.start({"training.seed": "1"}, resume=True)  # a later attempt of the same job
    assert resumed and second["run_id"] == first["run_id"]
    with mlflow_server.client() as client:
        second_run.end("queued")  # back to the queue: left running for the next attempt
        assert client.get_run(first["run_id"]).info.status == "RUNNING"
        second_run.end("failed")
        assert client.get_run(first["run_id"]).info.status == "FAILED"
        elsewhere = client.create_experiment(f"{experiment}-s3", artifact_location=(tmp_path / "local").as_uri())
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    local = MlflowRun(target.model_copy(update={"experiment": f"{experiment}-s3"}), creds, job_id, "r")
    local.start({}, resume=False)
    assert local.experiment_id == elsewhere
    with pytest.raises(ArtifactRefused, match="`file:` store"):
        local.log_adapter(adapter)
    assert not (tmp_path / "local").exists()  # nothing written onto this machine's disk

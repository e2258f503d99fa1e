"""Redis is not trusted: task messages crafted by whoever can write to the broker are refused, not acted on.

In-process: the Celery task functions are called directly with crafted arguments, against migrated SQLite and the
real Redis. Every refusal happens before a model would load; one test predicts with a real tiny classifier.
"""

import io
import json
import os
import secrets
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from transformers import AutoTokenizer

from app import storage
from app.broker import calls, events
from app.core.db import SessionLocal
from app.models import Artifact, Job
from app.spec.job import JobSpec
from worker import tasks
from worker.artifacts import pack_directory
from worker.inference import unpacked_adapter
from worker.training.classifier import add_adapter, load_classifier, save_classifier
from worker.training.errors import TrainingError

ROOT = Path(__file__).resolve().parents[2]
DATASET = "ds_" + "a" * 24
CLASSIFY = {
    "base_model": "no-such-model",  # loading it would fail: a test that reaches a model load shows it
    "dataset": DATASET,
    "format": {"type": "classification", "text": "sentence", "label": "label"},
    "quantization": None,
}
GENERATE = {"base_model": "no-such-model", "dataset": DATASET, "quantization": None}
CALLS = [(tasks.predict, {"texts": ["hi"]}), (tasks.generate, {"prompts": ["hi"]})]  # each with valid request data


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"untrusted-{secrets.token_hex(4)}"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside FT_DATA_DIR that nothing may delete."""
    victim = tmp_path / "x-.partial"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    return victim


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    """run_job installs a SIGTERM handler (drain on shutdown) in the process that calls it: give pytest its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def add_job(tenant: str, spec: dict[str, Any], status: str = "succeeded") -> str:
    with SessionLocal() as session:
        job = Job(tenant=tenant, status=status, spec=spec)
        session.add(job)
        session.commit()
        return job.id


def add_adapter_row(job_id: str, key: str, sha256: str) -> None:
    with SessionLocal() as session:
        session.add(Artifact(job_id=job_id, name="adapter", kind="adapter", path=key, size_bytes=1, sha256=sha256))
        session.commit()


def call_record(job_id: str, tenant: str | None = None, status: str = "queued", **extra: Any) -> str:
    """What the API writes when it sends a call (app/broker/calls.py start)."""
    call_id = f"gen_{secrets.token_hex(12)}"
    state = {"id": call_id, "job_id": job_id, "status": status, **({"tenant": tenant} if tenant else {}), **extra}
    events.redis_client().set(calls.call_key(call_id), json.dumps(state), ex=60)
    return call_id


def labels_only_archive(path: Path) -> tuple[str, str]:
    """A .tar.gz holding only labels.json, under FT_DATA_DIR -> (its key, its sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        data = json.dumps({"labels": ["neg", "pos"]}).encode()
        info = tarfile.TarInfo("labels.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return storage.relative(path), storage.sha256_file(path)


def test_a_predict_message_whose_job_id_is_a_path_deletes_nothing_and_is_refused(victim: Path) -> None:
    """Before: the job id was joined onto FT_DATA_DIR/cache/adapters and the `.partial` beside it deleted."""
    adapters = storage.data_root() / "cache" / "adapters"
    adapters.mkdir(parents=True, exist_ok=True)
    job_id = os.path.relpath(victim.parent / "x", adapters)  # ../../../tmp/.../x
    key, _ = labels_only_archive(storage.data_root() / "jobs" / f"job_{secrets.token_hex(12)}" / "adapter.tar.gz")
    call_id = f"gen_{secrets.token_hex(12)}"
    payload = {"spec": CLASSIFY, "adapter": key, "sha256": "", "texts": ["hi"]}

    outcome = tasks.predict(call_id, job_id, payload)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert outcome == "refused"
    assert calls.read(call_id) is None, "a refused message writes no call record"


@pytest.mark.parametrize("job_id, sha256", [("../../x", "a" * 64), ("job_" + "a" * 24, "/../../../../x-"), ("", "")])
def test_adapters_unpack_only_under_a_checked_id_and_checksum(victim: Path, job_id: str, sha256: str) -> None:
    key, _ = labels_only_archive(storage.data_root() / "jobs" / f"job_{secrets.token_hex(12)}" / "adapter.tar.gz")
    with pytest.raises(TrainingError, match="refused to unpack"):
        unpacked_adapter(job_id, storage.resolve(key), sha256)
    assert (victim / "precious.txt").is_file()


@pytest.mark.parametrize(
    "task, request_data", [(tasks.predict, {"texts": ["hi"]}), (tasks.generate, {"prompts": ["hi"]})]
)
def test_a_call_without_its_record_is_refused_and_no_record_is_made(tenant: str, task: Any, request_data: dict) -> None:
    job_id = add_job(tenant, CLASSIFY if task is tasks.predict else GENERATE)
    call_id = f"gen_{secrets.token_hex(12)}"
    assert task(call_id, job_id, request_data) == "refused"
    assert calls.read(call_id) is None


@pytest.mark.parametrize(
    "task, request_data", [(tasks.predict, {"texts": ["hi"]}), (tasks.generate, {"prompts": ["hi"]})]
)
def test_a_call_whose_record_names_another_job_or_tenant_or_already_ran_is_refused(
    tenant: str, task: Any, request_data: dict
) -> None:
    spec = CLASSIFY if task is tasks.predict else GENERATE
    mine, theirs = add_job(tenant, spec), add_job(f"{tenant}-other", spec)
    records = [
        (call_record(mine, tenant), theirs),  # the record is for another job than the message names
        (call_record(theirs, tenant), theirs),  # the record's tenant does not own the job
        (call_record(mine, tenant, status="succeeded", results=[{"label": "x"}]), mine),  # a replay
    ]
    for call_id, job_id in records:
        before = calls.read(call_id)
        assert task(call_id, job_id, request_data) == "refused"
        assert calls.read(call_id) == before, "the record of a refused message is left as it was"


@pytest.mark.parametrize("task, request_data", CALLS)
def test_a_call_on_a_job_deleted_since_it_was_sent_is_answered(tenant: str, task: Any, request_data: dict) -> None:
    """Its record is the API's own (same job, same tenant): the caller gets an answer, and its slot back."""
    job_id = f"job_{secrets.token_hex(12)}"
    call_id = call_record(job_id, tenant)
    assert task(call_id, job_id, request_data) == "failed"
    error = calls.read(call_id)["error"]
    assert error["type"] == "conflict" and "deleted" in error["message"], error


BAD_GENERATE = [
    ({"prompts": ["hi"], "max_new_tokens": 1_000_000}, "max_new_tokens"),
    ({"prompts": ["hi"], "temperature": -1}, "temperature"),
    ({"prompts": ["hi"], "top_p": 0}, "top_p"),
    ({"prompts": ["hi"], "seed": -1}, "seed"),
    ({"prompts": []}, "prompts"),
    ({"prompts": ["hi"] * 65}, "prompts"),
    ({"prompts": ["x" * 20_001]}, "prompts"),
    ({"prompts": ["hi"], "spec": GENERATE}, "spec"),  # nothing but the request's own fields
    ("not an object", ""),
]


@pytest.mark.parametrize("request_data, field", BAD_GENERATE)
def test_sampling_outside_the_api_bounds_is_refused_before_any_model_load(
    tenant: str, request_data: Any, field: str
) -> None:
    job_id = add_job(tenant, GENERATE)
    call_id = call_record(job_id, tenant)
    assert tasks.generate(call_id, job_id, request_data) == "failed"
    error = calls.read(call_id)["error"]
    assert error["type"] == "invalid_request" and field in error["message"], error  # not a failed model load


@pytest.mark.parametrize("payload", [{"texts": []}, {"texts": [""]}, {"texts": ["x" * 20_001]}, {"texts": "hi"}, {}])
def test_predict_texts_outside_the_api_bounds_are_refused(tenant: str, payload: dict) -> None:
    job_id = add_job(tenant, CLASSIFY)
    call_id = call_record(job_id, tenant)
    assert tasks.predict(call_id, job_id, payload) == "failed"
    error = calls.read(call_id)["error"]
    assert error["type"] == "invalid_request" and "texts" in error["message"], error


def test_a_payload_adapter_outside_the_data_dir_is_never_used(tenant: str, victim: Path) -> None:
    """The adapter comes from the job's Artifact row: a job with none has nothing to predict with, whatever the
    message names."""
    job_id = add_job(tenant, CLASSIFY)
    call_id = call_record(job_id, tenant)
    payload = {"spec": CLASSIFY, "adapter": str(victim / "precious.txt"), "sha256": "a" * 64, "texts": ["hi"]}
    assert tasks.predict(call_id, job_id, payload) == "failed"
    error = calls.read(call_id)["error"]
    assert error["type"] == "conflict" and "no adapter" in error["message"], error
    assert (victim / "precious.txt").is_file()


def test_an_adapter_that_does_not_match_its_recorded_checksum_is_not_unpacked(tenant: str) -> None:
    job_id = add_job(tenant, CLASSIFY)
    key, _ = labels_only_archive(storage.job_dir(job_id) / "adapter.tar.gz")
    add_adapter_row(job_id, key, "0" * 64)
    call_id = call_record(job_id, tenant)
    assert tasks.predict(call_id, job_id, {"texts": ["hi"], "sha256": storage.sha256_file(storage.resolve(key))}) == (
        "failed"
    )
    error = calls.read(call_id)["error"]
    assert error["type"] == "conflict" and "checksum" in error["message"], error
    assert not list((storage.data_root() / "cache" / "adapters").glob(f"{job_id}-*"))


def test_predict_uses_the_spec_adapter_and_checksum_in_sql_not_the_message(
    tenant: str, tiny_model: Path, tmp_path: Path
) -> None:
    """The happy path, with a real (untrained) tiny classifier: the message's spec, adapter and sha256 are lies."""
    spec = {**CLASSIFY, "base_model": tiny_model.name, "lora": {"r": 8, "alpha": 16}}
    job_id = add_job(tenant, spec)
    parsed, labels = JobSpec.model_validate(spec), ["neg", "pos"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = add_adapter(load_classifier(parsed, labels, tokenizer), parsed)
    adapter = save_classifier(model, tokenizer, labels, parsed, tmp_path / "adapter")
    _, sha256 = pack_directory(adapter, storage.job_dir(job_id) / "adapter.tar.gz")
    add_adapter_row(job_id, storage.relative(storage.job_dir(job_id) / "adapter.tar.gz"), sha256)

    call_id = call_record(job_id, tenant)
    lies = {"spec": {**CLASSIFY, "base_model": "../../elsewhere"}, "adapter": "../../x", "sha256": "b" * 64}
    assert tasks.predict(call_id, job_id, {**lies, "texts": ["good", "bad"]}) == "succeeded"
    results = calls.read(call_id)["results"]
    assert [r["label"] in labels for r in results] == [True, True]
    assert (storage.data_root() / "cache" / "adapters" / f"{job_id}-{sha256[:16]}" / "labels.json").is_file()


@pytest.mark.parametrize("job_id", ["../../x", "job_" + "g" * 24, DATASET, "job_" + "a" * 23, 42, None])
def test_a_training_message_with_a_malformed_job_id_is_dropped(job_id: Any) -> None:
    assert tasks.train(job_id) == "refused"


def test_a_stored_spec_that_no_longer_validates_fails_the_job_before_it_runs(
    tenant: str, sigterm_restored: None
) -> None:
    job_id = add_job(tenant, {"base_model": "../outside", "dataset": DATASET}, status="queued")
    assert tasks.train(job_id) == "failed"
    with SessionLocal() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error_type) == ("failed", "invalid_spec")
        assert "base_model" in job.error_message and "submit it again" in job.error_message


@pytest.mark.parametrize(
    "task, request_id",
    [
        (tasks.export, "../x"),
        (tasks.export, "ev_" + "a" * 24),  # an evaluation's id sent as an export
        (tasks.evaluate, "../x"),
        (tasks.evaluate, "exp_" + "a" * 24),
    ],
)
def test_export_and_evaluation_messages_need_their_own_ids(task: Any, request_id: str) -> None:
    assert task(request_id) == "refused"

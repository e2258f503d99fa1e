"""The official `openai` SDK against the live service: files, a real fine-tuning job, events, checkpoints, errors."""

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.integration.conftest import ONE_DATABASE, Stack
from tests.integration.test_end_to_end import QUOTES, quotes_jsonl

pytestmark = ONE_DATABASE

OPENAI_TERMINAL = {"succeeded", "failed", "cancelled"}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode()


def chat_rows(system: str) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": quote},
                {"role": "assistant", "content": ", ".join(tags)},
            ]
        }
        for quote, tags in QUOTES
    ]


@pytest.fixture
def sdk(stack: Stack) -> Iterator[openai.OpenAI]:
    # No retries: a 5xx or a wrong status must fail the test at once, not be papered over.
    client = openai.OpenAI(base_url=stack.local.base_url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    yield client
    client.close()


def wait_until(sdk: openai.OpenAI, job_id: str, done: Callable[[Any], bool], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} is still {job.status} after {timeout}s")


def test_sdk_uploads_trains_and_follows_a_chat_job(stack: Stack, sdk: openai.OpenAI) -> None:
    content = jsonl(chat_rows("Tag the quote.") * 2)
    train = sdk.files.create(file=("train.jsonl", content), purpose="fine-tune")
    valid = sdk.files.create(file=("valid.jsonl", jsonl(chat_rows("Tags, please."))), purpose="fine-tune")
    assert (train.object, train.purpose, train.bytes, train.filename) == (
        "file",
        "fine-tune",
        len(content),
        "train.jsonl",
    )
    assert sdk.files.retrieve(train.id).id == train.id
    newest = sdk.files.list(limit=1)
    assert [f.id for f in newest.data] == [valid.id] and newest.has_more
    assert sdk.files.list(limit=1, after=valid.id).data[0].id == train.id
    assert stack.client.get(f"/datasets/{train.id}").json()["columns"] == ["messages"]  # a file is a dataset

    job = sdk.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=train.id,
        validation_file=valid.id,
        suffix="quotes",
        seed=7,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 10}},
        },
        metadata={"team": "search", "ft.lora.r": "8", "ft.quantization": "null"},
        extra_body={"spec_overrides": {"training": {"max_steps": 6}}},
    )
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running")
    assert (job.model, job.training_file, job.validation_file, job.seed) == ("tiny-llama", train.id, valid.id, 7)
    assert job.hyperparameters.model_dump() == {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 10}
    assert job.metadata["ft.lora.r"] == "8" and job.fine_tuned_model is None

    ours = stack.client.get(f"/jobs/{job.id}").json()  # the same job, in our own terms
    assert ours["name"] == "quotes" and ours["spec"]["format"]["type"] == "chat" and ours["spec"]["lora"]["r"] == 8
    assert ours["spec"]["quantization"] is None  # `ft.` metadata keys set our own choices (fast on CPU)
    training = ours["spec"]["training"]
    assert (training["max_steps"], training["epochs"], training["batch_size"], training["seed"]) == (6, 2, 2, 7)
    assert training["learning_rate"] == pytest.approx(2e-3)
    assert sdk.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert job.id in [j.id for j in sdk.fine_tuning.jobs.list(limit=2)]  # iterating follows `after` pages

    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 300
    while (done := sdk.fine_tuning.jobs.retrieve(job.id)).status not in OPENAI_TERMINAL:
        seen.update((e.id, e) for e in sdk.fine_tuning.jobs.list_events(job.id, limit=50).data)
        assert time.monotonic() < deadline, f"job still {done.status}"
        time.sleep(0.5)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-llama:tests:quotes:{job.id}"
    assert done.finished_at and done.trained_tokens and done.trained_tokens > 0

    events = sdk.fine_tuning.jobs.list_events(job.id, limit=100)
    assert not events.has_more and set(seen) <= {e.id for e in events.data}
    assert [e.id for e in sdk.fine_tuning.jobs.list_events(job.id, limit=3)] == [e.id for e in events.data]
    assert events.data[0].message == "The job has successfully completed"
    assert events.data[-1].message == f"Created fine-tuning job: {job.id}"
    assert [e.created_at for e in events.data] == sorted((e.created_at for e in events.data), reverse=True)
    metrics = [e for e in events.data if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [6, 5, 4, 3, 2, 1]
    assert all(e.data["train_loss"] > 0 and e.data["total_steps"] == 6 for e in metrics)
    assert any(e.data.get("valid_loss") for e in metrics), "the validation file gives a validation loss"

    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    final = checkpoints[0]  # newest first: the final adapter, after any periodic checkpoint
    assert final.fine_tuned_model_checkpoint == done.fine_tuned_model and final.fine_tuning_job_id == job.id
    assert final.step_number == final.metrics.step == 6
    assert final.metrics.train_loss == metrics[0].data["train_loss"] and final.metrics.valid_loss
    assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)
    download = stack.client.get(final.to_dict()["download_url"])
    assert download.status_code == 200 and download.headers["content-type"] == "application/gzip"


def test_jobs_are_shared_with_the_jobs_api_and_cancel_both_ways(stack: Stack, sdk: openai.OpenAI) -> None:
    quotes = stack.upload("openai-quotes.jsonl", quotes_jsonl(4))
    ours = stack.client.post(
        "/jobs",
        json={
            "base_model": "tiny-llama",
            "dataset": quotes["id"],
            "format": {"type": "template", "template": "{quote} ->: {tags}"},
            "training": {"max_steps": 5000, "learning_rate": 1e-3, "batch_size": 2},
        },
    ).json()
    theirs = None
    try:  # both jobs train for 5000 steps: however the checks below end, neither may hold the worker after
        mapped = sdk.fine_tuning.jobs.retrieve(ours["id"])  # a /jobs job, seen through the SDK
        assert (mapped.model, mapped.training_file) == ("tiny-llama", quotes["id"]) and mapped.status in (
            "queued",
            "running",
        )
        assert mapped.hyperparameters.model_dump() == {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 5}
        assert ours["id"] in [j.id for j in sdk.fine_tuning.jobs.list(limit=100).data]

        rows = [{"prompt": f"{quote} ->:", "completion": f" {', '.join(tags)}"} for quote, tags in QUOTES]
        file = sdk.files.create(file=("pc.jsonl", jsonl(rows)), purpose="fine-tune")
        theirs = sdk.fine_tuning.jobs.create(
            model="tiny-llama", training_file=file.id, metadata={"ft.training.max_steps": "5000"}
        )
        spec = stack.client.get(f"/jobs/{theirs.id}").json()["spec"]  # a /v1 job, seen at /jobs
        assert spec["format"] == {
            "type": "prompt_completion",
            "prompt": "{prompt}",
            "completion": "{completion}",
            "train_on_inputs": False,
        }
        assert spec["training"]["max_steps"] == 5000 and spec["quantization"]["bits"] == 4  # QLoRA by default
        assert theirs.id in [j["id"] for j in stack.client.get("/jobs").json()["data"]]

        wait_until(sdk, ours["id"], lambda j: j.status == "running")  # cancel a running job through the SDK
        assert sdk.fine_tuning.jobs.cancel(ours["id"]).status in ("running", "cancelled")
        assert stack.wait(ours["id"])["status"] == "cancelled"
        assert stack.client.post(f"/jobs/{theirs.id}/cancel").status_code == 200  # and a /v1 job through /jobs
        assert wait_until(sdk, theirs.id, lambda j: j.status in OPENAI_TERMINAL).status == "cancelled"
    finally:
        for job_id in (ours["id"], theirs.id if theirs else None):
            if job_id:
                stack.client.post(f"/jobs/{job_id}/cancel")

    events = sdk.fine_tuning.jobs.list_events(theirs.id).data
    assert events[0].message == "The job was cancelled" and events[-1].message.startswith("Created fine-tuning job")
    with pytest.raises(openai.BadRequestError) as excinfo:  # OpenAI answers a finished job's cancel with a 400
        sdk.fine_tuning.jobs.cancel(theirs.id)
    assert excinfo.value.code == "invalid_state"


def test_errors_are_typed_sdk_exceptions(stack: Stack, sdk: openai.OpenAI) -> None:
    unknown = "job_000000000000000000000000"
    for call in (
        lambda: sdk.fine_tuning.jobs.retrieve(unknown),
        lambda: sdk.fine_tuning.jobs.cancel(unknown),
        lambda: sdk.fine_tuning.jobs.list_events(unknown),
        lambda: sdk.fine_tuning.jobs.checkpoints.list(unknown),
        lambda: sdk.files.retrieve("ds_000000000000000000000000"),
    ):
        with pytest.raises(openai.NotFoundError) as excinfo:
            call()
        assert excinfo.value.type == "invalid_request_error" and excinfo.value.code == "not_found"

    chat = sdk.files.create(file=("errors.jsonl", jsonl(chat_rows("Errors."))), purpose="fine-tune")
    quotes = sdk.files.create(file=("quotes.jsonl", quotes_jsonl(2)), purpose="fine-tune")
    bad_requests = {
        "training_file": {"training_file": "ds_000000000000000000000000"},
        "model": {"model": "https://evil.example/model"},
        "method.type": {"method": {"type": "reinforcement"}},
        "hyperparameters.n_epochs": {"hyperparameters": {"n_epochs": 0}},
        "lora.rank": {"extra_body": {"spec_overrides": {"lora": {"rank": 8}}}},
    }
    for param, fields in bad_requests.items():
        with pytest.raises(openai.BadRequestError) as excinfo:
            sdk.fine_tuning.jobs.create(**{"model": "tiny-llama", "training_file": chat.id, **fields})
        assert excinfo.value.param == param, excinfo.value.body
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=quotes.id)
    assert excinfo.value.param == "training_file" and "messages" in excinfo.value.message
    with pytest.raises(openai.BadRequestError) as excinfo:  # DPO on chat data: the file is at fault
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=chat.id, method={"type": "dpo"})
    assert excinfo.value.param == "training_file" and "needs DPO lines" in excinfo.value.message
    no_answer = sdk.files.create(
        file=("no-answer.jsonl", jsonl([{"messages": [{"role": "user", "content": "Hello?"}]}])), purpose="fine-tune"
    )
    with pytest.raises(openai.BadRequestError) as excinfo:  # rows are checked before the job is queued
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=no_answer.id)
    assert excinfo.value.param == "training_file" and "row 1" in excinfo.value.message
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.files.create(file=("x.jsonl", b'{"a": 1}'), purpose="assistants")
    assert excinfo.value.param == "purpose"

    base_url = stack.local.base_url + "/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="ft_abc_notakey", max_retries=0).fine_tuning.jobs.list()
    other = openai.OpenAI(base_url=base_url, api_key=stack.make_key("openai-other"), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(chat.id)  # another tenant's file does not exist for it
    assert other.fine_tuning.jobs.list().data == []
    assert "detail" in stack.client.get(f"/jobs/{unknown}").json()  # the rest of the API keeps its own errors

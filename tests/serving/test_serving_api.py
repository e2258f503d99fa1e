"""The serving API in-process: /v1/models, /v1/chat/completions and /v1/completions on migrated SQLite and real Redis.

The worker half (worker/serving.py) is not run here: `worker_double` plays it, minimally, by taking the queued
records off the real queue and publishing answer entries into each call's real answer stream. Everything on the API
side (model resolution, templates, limits, the queue, the wake-up task, the stream reader, the response shapes) is
the real code.
"""

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import redis
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app.broker.calls import slot_key
from app.broker.serving import ServingQueue
from app.checks.chat_templates import render_chat
from app.checks.tokenization import read_model_tokenizer
from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.models import Artifact, Job, utcnow
from app.serving.names import fine_tuned_model_name
from app.spec.templates import named_template
from app.tenants.auth import create_key
from tests.conftest import TINY_MODEL
from tests.inprocess_server import serving

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
Entries = Callable[[dict], list[dict]]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def redis_conn(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A queue of this test's own (the serving keys and the Celery queue are named after it)."""
    monkeypatch.setattr(settings, "training_queue", f"serve-api-{secrets.token_hex(4)}")
    monkeypatch.setattr(settings, "inference_queue", None)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    for key in [*client.scan_iter(f"ft:serve:{settings.training_queue}:*"), settings.training_queue]:
        client.delete(key)


@pytest.fixture
def tenant() -> str:
    return f"serve-{secrets.token_hex(4)}"


@pytest.fixture
def key(tenant: str) -> str:
    with SessionLocal() as session:
        key = create_key(session, "serving", tenant=tenant)
        session.commit()
    return key


@pytest.fixture
def client(key: str, redis_conn: redis.Redis, tiny_model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False) as c:
        yield c


def add_job(tenant: str, status: str = "succeeded", **spec: object) -> Job:
    """A job in SQL as a finished training leaves it: the spec, and an adapter and a checkpoint artifact."""
    full = {"base_model": TINY_MODEL, "dataset": "ds_x", **spec}
    with SessionLocal() as session:
        job = Job(tenant=tenant, status=status, spec=full, name="greeter", finished_at=utcnow())
        session.add(job)
        session.flush()
        for name, kind, step in (("adapter", "adapter", None), ("checkpoint-2", "checkpoint", 2)):
            path = f"jobs/{job.id}/{name}.tar.gz"
            artifact = Artifact(job_id=job.id, name=name, kind=kind, path=path, size_bytes=1, sha256="a" * 64)
            artifact.step = step
            session.add(artifact)
        session.commit()
        session.refresh(job)
        session.expunge(job)
        return job


def answer_with(*texts: str) -> Entries:
    """The worker double's answer to any record: each text as one choice, streamed in two deltas."""

    def entries(record: dict) -> list[dict]:
        out: list[dict] = []
        for index in range(record["n"]):
            text = texts[index % len(texts)]
            out += [{"type": "delta", "index": index, "text": part} for part in (text[:2], text[2:])]
            out.append({"type": "done", "index": index, "finish_reason": "stop"})
        completion = sum(len(texts[i % len(texts)].split()) for i in range(record["n"]))
        return [*out, {"type": "usage", "prompt_tokens": record["prompt_tokens"], "completion_tokens": completion}]

    return entries


@pytest.fixture
def worker_double(redis_conn: redis.Redis) -> Iterator[Callable[[Entries], list[dict]]]:
    """Start the double of the worker's serving loop; returns the records it took, for the test to inspect."""
    stop, taken, threads = threading.Event(), [], []

    def start(entries: Entries) -> list[dict]:
        queue = ServingQueue(redis_conn)

        def run() -> None:
            while not stop.is_set():
                for record in queue.take(8):
                    taken.append(record)
                    for entry in entries(record):
                        queue.publish(record["id"], **entry)
                    queue.finish(record["id"])
                time.sleep(0.01)

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
        return taken

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)


def error_of(response) -> dict:  # noqa: ANN001
    body = response.json()
    assert "error" in body, body
    return body["error"]


def test_models_lists_own_base_models_and_fine_tuned_models_only(client: TestClient, tenant: str) -> None:
    done = add_job(tenant)
    running = add_job(tenant, status="running", base_model="tiny-other")
    classifier = add_job(tenant, task="classification", format={"type": "classification"}, base_model="tiny-bert")
    theirs = add_job(f"other-{secrets.token_hex(4)}", base_model="their-base")
    listed = client.get("/v1/models")
    assert listed.status_code == 200, listed.text
    ids = [m["id"] for m in listed.json()["data"]]
    # tiny-other is no local model and its only job has not succeeded: its base is not the tenant's to call yet.
    assert ids == [TINY_MODEL, fine_tuned_model_name(done)], ids
    refused = client.post("/v1/completions", json={"model": "tiny-other", "prompt": "hi"})
    assert refused.status_code == 404 and error_of(refused)["code"] == "model_not_found"
    assert fine_tuned_model_name(running) not in ids and fine_tuned_model_name(classifier) not in ids
    assert "tiny-bert" not in ids and "their-base" not in ids
    one = client.get(f"/v1/models/{fine_tuned_model_name(done)}")
    assert one.status_code == 200 and one.json()["owned_by"] == tenant and one.json()["object"] == "model"
    missing = client.get(f"/v1/models/{fine_tuned_model_name(theirs)}")
    assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"


def test_another_tenants_model_is_not_found_and_a_classifier_points_to_predict(client: TestClient, tenant: str) -> None:
    theirs = add_job(f"other-{secrets.token_hex(4)}")
    for model in (fine_tuned_model_name(theirs), "their-base", fine_tuned_model_name(theirs) + ":ckpt-step-2"):
        response = client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})
        assert response.status_code == 404, response.text
        assert error_of(response)["code"] == "model_not_found" and error_of(response)["param"] == "model"
    # A name ending in a job id of ours but not that job's name: still not a model.
    mine = add_job(tenant)
    forged = f"ft:{TINY_MODEL}:someone-else:greeter:{mine.id}"
    assert client.post("/v1/completions", json={"model": forged, "prompt": "hi"}).status_code == 404
    classifier = add_job(tenant, task="classification", format={"type": "classification"})
    body = {"model": fine_tuned_model_name(classifier), "messages": MESSAGES}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and f"/jobs/{classifier.id}/predict" in error_of(response)["message"]


def test_max_tokens_is_bounded_and_the_prompt_must_fit_the_context(
    client: TestClient, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fine_tuned_model_name(add_job(tenant, format={"type": "chat"}))
    monkeypatch.setattr(settings, "serving_max_tokens", 64)
    over = client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 65})
    assert over.status_code == 400 and "FT_SERVING_MAX_TOKENS" in error_of(over)["message"]
    assert error_of(over)["param"] == "max_tokens"
    monkeypatch.setattr(settings, "serving_max_tokens", 4096)
    long = [{"role": "user", "content": "the quick brown fox " * 600}]  # > 2048 tokens, the tiny model's context
    response = client.post("/v1/chat/completions", json={"model": model, "messages": long, "max_tokens": 8})
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "context_length_exceeded" and "2,048" in error_of(response)["message"]
    body = {"model": model, "prompt": "the quick brown fox " * 300, "max_tokens": 2048}  # fits alone, not with 2048
    near = client.post("/v1/completions", json=body)
    assert near.status_code == 400 and error_of(near)["code"] == "context_length_exceeded"


def test_a_full_queue_is_429_with_retry_after(
    client: TestClient, tenant: str, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fine_tuned_model_name(add_job(tenant))
    monkeypatch.setattr(settings, "serving_max_queue", 1)
    ServingQueue(redis_conn).enqueue({"id": "cmpl_" + "0" * 24, "tenant": "someone", "deadline": time.time() + 60})
    response = client.post("/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 4})
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) > 0 and "FT_SERVING_MAX_QUEUE" in error_of(response)["message"]


def test_the_tenants_inference_rate_limits_completions(
    client: TestClient, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: {"inference_rate_per_minute": 1}})
    client.post("/v1/completions", json={"model": "nothing-here", "prompt": "hi"})
    limited = client.post("/v1/completions", json={"model": "nothing-here", "prompt": "hi"})
    assert limited.status_code == 429 and error_of(limited)["type"] == "rate_limit_error"
    assert "Retry-After" in limited.headers


def test_unsupported_options_are_refused_by_name(client: TestClient, tenant: str) -> None:
    model = fine_tuned_model_name(add_job(tenant))
    for extra, param in (({"logprobs": True}, "logprobs"), ({"n": 9}, "n"), ({"stop": list("abcde")}, "stop")):
        response = client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra})
        assert response.status_code == 400 and error_of(response)["param"] == param, response.text


def test_the_queued_record_carries_the_prompt_rendered_with_the_jobs_template(
    client: TestClient, tenant: str, tiny_model: Path, worker_double: Callable[[Entries], list[dict]]
) -> None:
    tok = read_model_tokenizer(tiny_model)
    chatml = add_job(tenant, format={"type": "chat", "chat_template": "chatml"})
    own = add_job(tenant, format={"type": "chat"})  # the model's own template: rendered in the sandbox
    taken = worker_double(answer_with("Hello there"))
    for job in (chatml, own):
        response = client.post(
            "/v1/chat/completions", json={"model": fine_tuned_model_name(job), "messages": MESSAGES, "max_tokens": 5}
        )
        assert response.status_code == 200, response.text
    template = {chatml.id: named_template("chatml"), own.id: tok.chat_template}
    for record in taken:
        expected, _ = render_chat(
            template[record["job_id"]], MESSAGES, tok.special_tokens, None, True, max_output_chars=10**6
        )
        assert record["prompt"] == expected
        assert record["prompt"].endswith(("<|im_start|>assistant\n", "<|assistant|>\n"))
        assert record["base_model"] == TINY_MODEL and record["max_tokens"] == 5 and record["checkpoint_step"] is None
        assert record["tenant"] == tenant and record["id"].startswith("cmpl_")
    assert {r["job_id"] for r in taken} == {chatml.id, own.id}


def test_answers_are_assembled_from_published_entries_streamed_or_not(
    client: TestClient, tenant: str, worker_double: Callable[[Entries], list[dict]]
) -> None:
    job = add_job(tenant, format={"type": "chat"})
    model = fine_tuned_model_name(job) + ":ckpt-step-2"
    taken = worker_double(answer_with("Hello there", "Hi you"))
    body = {"model": model, "messages": MESSAGES, "max_tokens": 6, "n": 2, "temperature": 0.5, "seed": 7}
    whole = client.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    data = whole.json()
    assert data["object"] == "chat.completion" and data["model"] == model
    assert [c["message"]["content"] for c in data["choices"]] == ["Hello there", "Hi you"]
    assert data["usage"]["completion_tokens"] == 4
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 4
    assert taken[0]["checkpoint_step"] == 2 and taken[0]["n"] == 2 and taken[0]["seed"] == 7
    streamed = client.post(
        "/v1/chat/completions", json={**body, "n": 1, "stream": True, "stream_options": {"include_usage": True}}
    )
    lines = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there" and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    plain = client.post("/v1/completions", json={"model": TINY_MODEL, "prompt": "Once upon", "max_tokens": 3})
    assert plain.json()["object"] == "text_completion" and plain.json()["choices"][0]["text"] == "Hello there"
    assert taken[-1]["prompt"] == "Once upon" and taken[-1]["job_id"] is None


def test_a_deadline_that_passes_is_504_or_an_error_chunk(
    client: TestClient, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fine_tuned_model_name(add_job(tenant))
    monkeypatch.setattr(settings, "serving_timeout_s", 0.2)
    monkeypatch.setattr("app.serving.embedded.GRACE_S", 0.0)
    response = client.post("/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 4})
    assert response.status_code == 504 and "FT_SERVING_TIMEOUT_S" in error_of(response)["message"]


def test_the_openai_sdk_parses_models_completions_and_streams(
    key: str, tenant: str, redis_conn: redis.Redis, tiny_model: Path, worker_double: Callable[[Entries], list[dict]]
) -> None:
    model = fine_tuned_model_name(add_job(tenant, format={"type": "chat"}))
    worker_double(answer_with("Hello there"))
    with serving() as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        assert model in [m.id for m in sdk.models.list()]
        chat = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0)
        assert chat.choices[0].message.content == "Hello there" and chat.choices[0].finish_reason == "stop"
        assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
        stream = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello there"
        text = sdk.completions.create(model=TINY_MODEL, prompt="Once", max_tokens=4)
        assert text.choices[0].text == "Hello there"
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="ft:nobody:x::job_" + "0" * 24, messages=MESSAGES)


def test_an_error_after_some_text_ends_the_stream_with_an_error_chunk(
    client: TestClient, tenant: str, worker_double: Callable[[Entries], list[dict]]
) -> None:
    model = fine_tuned_model_name(add_job(tenant, format={"type": "chat"}))

    def cut_short(record: dict) -> list[dict]:
        return [
            {"type": "delta", "index": 0, "text": "Hel"},
            {"type": "error", "kind": "timeout", "message": "the deadline passed (FT_SERVING_TIMEOUT_S)"},
        ]

    worker_double(cut_short)
    body = {"model": model, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    streamed = client.post("/v1/chat/completions", json=body)
    assert streamed.status_code == 200
    lines = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert json.loads(lines[1])["choices"][0]["delta"]["content"] == "Hel"
    assert "FT_SERVING_TIMEOUT_S" in json.loads(lines[2])["error"]["message"] and lines[3] == "[DONE]"
    assert client.post("/v1/chat/completions", json={**body, "stream": False}).status_code == 504


def test_completions_hold_a_call_slot_of_the_tenant_until_they_end(
    client: TestClient, tenant: str, monkeypatch: pytest.MonkeyPatch, worker_double: Callable[[Entries], list[dict]]
) -> None:
    model = fine_tuned_model_name(add_job(tenant))
    worker_double(answer_with("Hi"))
    for _ in range(2):  # the slot of the first was given back, or the second would be refused
        assert client.post("/v1/completions", json={"model": model, "prompt": "Hello"}).status_code == 200
    assert redis.Redis.from_url(settings.redis_url).zcard(slot_key(tenant)) == 0
    monkeypatch.setattr(settings, "tenant_limits", {**settings.tenant_limits, tenant: {"max_concurrent_calls": 0}})
    refused = client.post("/v1/completions", json={"model": model, "prompt": "Hello"})
    assert refused.status_code == 429 and "max_concurrent_calls" in error_of(refused)["message"]

"""The official `openai` SDK calls a model it fine-tuned: the live API, the Celery inference worker, Redis, SQL.

One tiny job is trained through /v1/fine_tuning/jobs (few steps, a high learning rate, so the adapter moves the
greedy answer), then listed with `models.list()` and called with `chat.completions.create`, streamed and not, on the
embedded backend, and again through an API replica with FT_SERVING_BACKEND=vllm in front of a real vLLM server
(tests/vllm_server.py); each time its answer must differ from the base model's to the same messages.
"""

import json
import time
from collections.abc import Iterator

import openai
import pytest

from tests.integration.conftest import ONE_DATABASE, Stack
from tests.integration.replicas import replicas
from tests.vllm_server import VllmServer

pytestmark = ONE_DATABASE

ASK = [{"role": "system", "content": "Answer with the fruit."}, {"role": "user", "content": "Which fruit?"}]
ANSWER = "banana banana banana"


@pytest.fixture
def sdk(stack: Stack) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=stack.local.base_url + "/v1", api_key=stack.key, max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def fine_tuned(stack: Stack) -> str:
    """The `fine_tuned_model` of one tiny job, trained once for this module's tests."""
    client = openai.OpenAI(base_url=stack.local.base_url + "/v1", api_key=stack.key, max_retries=0, timeout=120)
    with client:
        return trained_model(client)


def trained_model(sdk: openai.OpenAI) -> str:
    rows = [{"messages": [*ASK, {"role": "assistant", "content": ANSWER}]}] * 8
    content = "\n".join(json.dumps(row) for row in rows).encode()
    train = sdk.files.create(file=("fruit.jsonl", content), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=train.id,
        suffix="fruit",
        seed=3,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 50}},
        },
        metadata={"ft.lora.r": "8", "ft.quantization": "null"},
        extra_body={"spec_overrides": {"training": {"max_steps": 12}}},
    )
    deadline = time.monotonic() + 300
    while (done := sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {done.status}"
        time.sleep(0.5)
    assert done.status == "succeeded", done.error
    return done.fine_tuned_model


def test_the_sdk_lists_and_calls_its_fine_tuned_model_streamed_and_not(
    stack: Stack, sdk: openai.OpenAI, fine_tuned: str
) -> None:
    model = fine_tuned
    assert {model, "tiny-llama"} <= {m.id for m in sdk.models.list()}
    assert sdk.models.retrieve(model).owned_by == "tests"

    tuned = sdk.chat.completions.create(model=model, messages=ASK, max_tokens=8, temperature=0)
    base = sdk.chat.completions.create(model="tiny-llama", messages=ASK, max_tokens=8, temperature=0)
    text = tuned.choices[0].message.content
    assert text and text != base.choices[0].message.content, (text, base.choices[0].message.content)
    assert tuned.model == model and tuned.choices[0].finish_reason in ("stop", "length")
    usage = tuned.usage
    assert 0 < usage.completion_tokens <= 8 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    stream = sdk.chat.completions.create(
        model=model, messages=ASK, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text  # greedy: the same text
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == (
        usage.model_dump(include={"prompt_tokens", "completion_tokens"})
    )

    with pytest.raises(openai.NotFoundError):  # another tenant's key cannot reach it
        other = openai.OpenAI(base_url=sdk.base_url, api_key=stack.make_key("intruder", tenant="intruders"))
        other.chat.completions.create(model=model, messages=ASK, max_tokens=2)


def test_the_same_calls_run_on_the_vllm_backend(stack: Stack, fine_tuned: str, vllm_server: VllmServer) -> None:
    """An API replica with FT_SERVING_BACKEND=vllm: same key, same model name, answered by vLLM with the job's
    adapter registered at run time."""
    vllm = {"serving_backend": "vllm", "vllm_url": vllm_server.url, "vllm_api_key": vllm_server.api_key}
    with replicas(stack, 1, {}, **vllm) as (replica,):
        client = openai.OpenAI(base_url=replica.base_url + "/v1", api_key=stack.key, max_retries=0, timeout=120)
        with client:
            assert fine_tuned in {m.id for m in client.models.list()}
            tuned = client.chat.completions.create(model=fine_tuned, messages=ASK, max_tokens=8, temperature=0)
            base = client.chat.completions.create(model="tiny-llama", messages=ASK, max_tokens=8, temperature=0)
            text = tuned.choices[0].message.content
            assert text and text != base.choices[0].message.content, (text, base.choices[0].message.content)
            assert tuned.model == fine_tuned and 0 < tuned.usage.completion_tokens <= 8
            stream = client.chat.completions.create(
                model=fine_tuned, messages=ASK, max_tokens=8, temperature=0, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
            with pytest.raises(openai.NotFoundError):  # the API's tenant check comes before vLLM hears of it
                intruder = stack.make_key("intruder-vllm", tenant="intruders")
                openai.OpenAI(base_url=client.base_url, api_key=intruder, max_retries=0).chat.completions.create(
                    model=fine_tuned, messages=ASK, max_tokens=2
                )

"""The public data shapes through the API on the real stack: each validates with the right trained parts and trains a
QLoRA job to `succeeded`; a bad row in any of them is a 422 naming the row and the value, and stores nothing.

Files are written in the shapes as LLaMA-Factory / Axolotl (ShareGPT, Alpaca) and OpenAI (chat with tools and
weights) document them; the tool-calling ones train on tiny-qwen, the tiny model with Qwen2.5's real template.
"""

import json
from pathlib import Path

import pytest

from tests.integration.conftest import ONE_DATABASE, Stack

pytestmark = ONE_DATABASE

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CITIES = [("Paris", "sunny, 21C", "Yes, it is sunny."), ("Oslo", "rain, 9C", "No, it is raining.")]


def sharegpt_rows() -> list[dict]:
    return [
        {
            "conversations": [
                {"from": "human", "value": f"Is it sunny in {city}?"},
                {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": city}})},
                {"from": "observation", "value": weather},
                {"from": "gpt", "value": answer},
            ],
            "system": "Answer from the tool's result.",
            "tools": json.dumps([WEATHER]),  # LLaMA-Factory keeps tools as a JSON string
        }
        for city, weather, answer in CITIES * 3
    ]


def alpaca_rows() -> list[dict]:
    return [
        {
            "instruction": "Is the review positive or negative?",
            "input": review,
            "output": label,
            "history": [["Is 'The food was terrible.' positive or negative?", "negative"]],
        }
        for review, label in [("This movie was wonderful.", "positive"), ("A boring, awful story.", "negative")] * 3
    ]


def openai_rows() -> list[dict]:
    rows = []
    for i, (city, weather, answer) in enumerate(CITIES * 3):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Is it sunny in {city}?"},
                    {"role": "assistant", "content": "Let me guess: yes.", "weight": 0},
                    {"role": "user", "content": "Please check."},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": f"call_{i}", "content": weather},
                    {"role": "assistant", "content": answer, "weight": 1},
                ],
                "tools": [{"type": "function", "function": WEATHER}],
            }
        )
    return rows


SHAPES = {
    # name: (rows, format, base model, the first example's trained part)
    "sharegpt": (
        sharegpt_rows,
        {"type": "sharegpt"},
        "tiny-qwen",
        '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        " … \nYes, it is sunny.<|im_end|>\n",
    ),
    "alpaca": (alpaca_rows, {"type": "alpaca"}, "tiny-llama", "negative</s> … positive</s>"),
    "openai-chat": (
        openai_rows,
        {"type": "chat"},
        "tiny-qwen",
        '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        " … \nYes, it is sunny.<|im_end|>\n",
    ),
    "prompt-completion-all-tokens": (
        lambda: [{"prompt": "Is the review positive? A boring story.", "completion": " negative"}] * 6,
        {"type": "prompt_completion", "train_on_inputs": True},
        "tiny-llama",
        "Is the review positive? A boring story. negative</s>",
    ),
}


def spec(dataset: str, fmt: dict, base_model: str) -> dict:
    return {
        "base_model": base_model,
        "dataset": dataset,
        "format": fmt,
        "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True},
        "training": {"max_steps": 2, "batch_size": 2, "max_seq_length": 1024},
    }


def jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_validates_with_its_trained_part_and_trains_qlora(stack: Stack, tiny_qwen: Path, shape: str) -> None:
    rows, fmt, model, trained = SHAPES[shape]
    dataset = stack.upload(f"{shape}.jsonl", jsonl(rows()))
    body = spec(dataset["id"], fmt, model)
    report = stack.client.post("/jobs/validate", json=body)
    assert report.status_code == 200, report.text
    checked = report.json()
    assert checked["ok"], checked["problems"]
    assert checked["examples"][0]["trained"] == trained
    if shape == "openai-chat":  # the weight-0 guess is read, not trained
        assert "Let me guess: yes." in checked["examples"][0]["text"] and "guess" not in trained
    job = stack.client.post("/jobs", json=body)
    assert job.status_code == 201, job.text
    done = stack.wait(job.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["step"] == 2


BAD = {
    "an unknown speaker": (
        {"conversations": [{"from": "narrator", "value": "Once"}, {"from": "gpt", "value": "upon"}]},
        {"type": "sharegpt"},
        "turn 0 has speaker 'narrator'",
    ),
    "turns that do not alternate": (
        {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        {"type": "sharegpt"},
        "turn 1 (human): turns must alternate",
    ),
    "a weight other than 0 or 1": (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0.5}]},
        {"type": "chat"},
        "weight must be 0 or 1, got 0.5",
    ),
    "arguments that are not JSON": (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "f", "arguments": "{city"}}],
                },
            ]
        },
        {"type": "chat"},
        "arguments are not valid JSON: '{city'",
    ),
    "a tools cell that is not function schemas": (
        {
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "tools": '["get_weather"]',
        },
        {"type": "chat"},
        "tools[0] is not a function schema",
    ),
    "nothing left to train on": (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]},
        {"type": "chat"},
        "there is nothing left to train on",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_row_is_a_422_naming_the_row_and_the_value_and_nothing_is_stored(stack: Stack, case: str) -> None:
    bad_row, fmt, words = BAD[case]
    good = sharegpt_rows()[0] if fmt["type"] == "sharegpt" else openai_rows()[0]
    dataset = stack.upload("mixed.jsonl", jsonl([good, good, bad_row]))
    jobs_before = stack.client.get("/jobs", params={"limit": 500}).json()["data"]
    refused = stack.client.post("/jobs", json=spec(dataset["id"], fmt, "tiny-qwen"))
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("row 3: ") and words in detail, detail
    assert stack.client.get("/jobs", params={"limit": 500}).json()["data"] == jobs_before


def test_the_openai_sdk_trains_tool_calls_and_weights_on_a_base_model_with_chatml(
    stack: Stack, tiny_base: Path
) -> None:
    """OpenAI's own chat format, every field of it, through /v1 on a model with no chat template of its own."""
    import openai

    sdk = openai.OpenAI(base_url=stack.local.base_url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    train = sdk.files.create(file=("tools.jsonl", jsonl(openai_rows())), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as refused:  # no template: said before anything is queued
        sdk.fine_tuning.jobs.create(model="tiny-base", training_file=train.id)
    assert "has no chat template" in str(refused.value) and "chatml" in str(refused.value)
    job = sdk.fine_tuning.jobs.create(
        model="tiny-base",
        training_file=train.id,
        extra_body={
            "spec_overrides": {
                "format": {"type": "chat", "chat_template": "chatml"},
                "training": {"max_steps": 2, "max_seq_length": 2048},  # a tiny vocabulary: long sequences
            }
        },
    )
    done = stack.wait(job.id)
    assert done["status"] == "succeeded", done["error"]
    assert done["spec"]["format"]["chat_template"] == "chatml"

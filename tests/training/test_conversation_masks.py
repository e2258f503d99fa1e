"""Loss masks of the conversational shapes (ShareGPT, Alpaca, OpenAI chat with tools and weights, train_on_inputs),
read from the batch the real SFTTrainer feeds the model, and held three ways: the trainer's batch, the API's copy
(POST /jobs/validate, no torch) and, where transformers can say, its own apply_chat_template assistant mask.

The tool-calling rows go through Qwen2.5's real training template (tiny-qwen) as well as the tiny model's own.
"""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app.spec.examples import to_example
from tests.conftest import MODELS_DIR, TINY_MODEL, TINY_QWEN
from tests.training.test_label_masks import _spec, api_mask, trainer_batch

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "Is it sunny in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "sunny, 21C"},
        {"from": "gpt", "value": "Yes, it is sunny."},
    ],
    "system": "Be brief.",
    "tools": json.dumps(TOOLS),
}
OPENAI_TOOLS = {
    "messages": [
        {"role": "user", "content": "Is it sunny in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "sunny, 21C"},
        {"role": "assistant", "content": "Yes, it is sunny."},
    ],
    "tools": [{"type": "function", "function": TOOLS[0]}],
}
WEIGHTED = {
    "messages": [
        {"role": "user", "content": "Is the food good?"},
        {"role": "assistant", "content": "The food was terrible.", "weight": 0},
        {"role": "user", "content": "And the movie?"},
        {"role": "assistant", "content": "This movie was wonderful.", "weight": 1},
    ]
}
ALPACA = {
    "instruction": "Is the review positive?",
    "input": "This movie was wonderful.",
    "output": "positive",
    "system": "Answer in one word.",
    "history": [["Is the review positive? The food was terrible.", "negative"]],
}


def trained_text(model_dir: Path, ids: list[int], labels: list[int]) -> list[str]:
    """The trained runs of a batch, decoded."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    runs, run = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    return [tokenizer.decode(r) for r in [*runs, run] if r]


def three_ways(spec_fmt: dict, model: str, model_dir: Path, row: dict, tmp_path: Path) -> tuple[list, list]:
    """The trainer's (ids, labels), after checking the API's mask is the same."""
    spec = _spec(spec_fmt, base_model=model, max_seq_length=4096)  # a tiny vocabulary makes long sequences
    ids, labels = trainer_batch(spec, row, tmp_path)
    api_ids, trained = api_mask(spec, row, model_dir)
    assert api_ids == ids and trained == [x != -100 for x in labels]
    return ids, labels


def hf_assistant_mask(model_dir: Path, example: dict) -> tuple[list[int], list[bool]]:
    """transformers' own rendering and assistant mask of an (unweighted) conversation."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = tokenizer.apply_chat_template(
        example["messages"],
        tools=example.get("tools"),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    return list(out["input_ids"]), [bool(x) for x in out["assistant_masks"]]


@pytest.mark.parametrize("model", [TINY_MODEL, TINY_QWEN])
@pytest.mark.parametrize("shape", ["sharegpt", "chat"])
def test_tool_calls_and_answers_train_and_tool_results_do_not(
    shape: str, model: str, tiny_model: Path, tiny_qwen: Path, tmp_path: Path
) -> None:
    model_dir = MODELS_DIR / model
    row = SHAREGPT if shape == "sharegpt" else OPENAI_TOOLS
    ids, labels = three_ways({"type": shape}, model, model_dir, row, tmp_path)
    runs = trained_text(model_dir, ids, labels)
    assert len(runs) == 2
    assert "get_weather" in runs[0] and '"city": "Paris"' in runs[0] and "Yes, it is sunny." in runs[1]
    text = AutoTokenizer.from_pretrained(model_dir).decode(ids)
    assert "sunny, 21C" in text and "The weather in a city" in text  # the tool result and the schema are read
    assert not any("sunny, 21C" in r or "The weather in a city" in r for r in runs)  # but carry no loss
    hf_ids, hf_mask = hf_assistant_mask(model_dir, to_example(_spec({"type": shape}).format, row, 1))
    assert hf_ids == ids and hf_mask == [x != -100 for x in labels]


def test_a_weight_0_turn_is_read_but_not_trained(tiny_qwen: Path, tmp_path: Path) -> None:
    ids, labels = three_ways({"type": "chat"}, TINY_QWEN, tiny_qwen, WEIGHTED, tmp_path)
    runs = trained_text(tiny_qwen, ids, labels)
    assert len(runs) == 1 and "This movie was wonderful." in runs[0]
    assert "The food was terrible." in AutoTokenizer.from_pretrained(tiny_qwen).decode(ids)


@pytest.mark.parametrize("model", [TINY_MODEL, "tiny-base"])
def test_alpaca_trains_every_response_through_the_template_or_the_plain_layout(
    model: str, tiny_model: Path, tiny_base: Path, tmp_path: Path
) -> None:
    model_dir = MODELS_DIR / model
    ids, labels = three_ways({"type": "alpaca"}, model, model_dir, ALPACA, tmp_path)
    runs = [r.strip() for r in trained_text(model_dir, ids, labels)]
    assert runs == ["negative</s>", "positive</s>"]
    text = AutoTokenizer.from_pretrained(model_dir).decode(ids)
    assert "Is the review positive?\n\nThis movie was wonderful." in text  # instruction, a blank line, input
    if model == "tiny-base":  # no chat template: the documented plain layout
        assert text.startswith("Answer in one word.\n\n### Instruction:\n")
        assert "\n\n### Response:\npositive</s>" in text


def test_train_on_inputs_trains_every_token_but_weight_0_turns(tiny_qwen: Path, tmp_path: Path) -> None:
    fmt = {"type": "chat", "train_on_inputs": True}
    ids, labels = three_ways(fmt, TINY_QWEN, tiny_qwen, WEIGHTED, tmp_path)
    untrained = AutoTokenizer.from_pretrained(tiny_qwen).decode([t for t, x in zip(ids, labels, strict=True) if x < 0])
    assert "The food was terrible." in untrained and "Is the food good?" not in untrained
    fmt = {"type": "prompt_completion", "train_on_inputs": True}
    ids, labels = three_ways(fmt, TINY_MODEL, MODELS_DIR / TINY_MODEL, {"prompt": "A", "completion": " b"}, tmp_path)
    assert labels == ids

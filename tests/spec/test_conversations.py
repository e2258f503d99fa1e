"""ShareGPT, Alpaca and the whole OpenAI chat message as examples: what rows become, and each bad row's 422 text."""

import json

import pytest
from pydantic import ValidationError

from app.spec.examples import RowError, to_example
from app.spec.formats import AlpacaFormat, ChatFormat, ShareGPTFormat
from app.spec.job import JobSpec

TOOL = {"name": "get_weather", "description": "The weather", "parameters": {"type": "object", "properties": {}}}


def fmt(spec: dict) -> object:
    return JobSpec.model_validate(
        {"base_model": "tiny-llama", "dataset": "ds_000000000000000000000000", "format": spec}
    ).format


def refused(format_: object, row: dict) -> str:
    with pytest.raises(RowError) as caught:
        to_example(format_, row, 7)
    assert caught.value.row == 7
    return caught.value.message


def test_sharegpt_becomes_openai_messages_with_tool_calls_and_results() -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "Sunny."},
        ],
        "system": "Be brief.",
        "tools": json.dumps([TOOL]),
    }
    example = to_example(ShareGPTFormat(), row, 1)
    assert example["tools"] == [{"type": "function", "function": TOOL}]
    assert example["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    "id": "call_1_0",
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1_0", "name": "get_weather"},
        {"role": "assistant", "content": "Sunny."},
    ]


def test_sharegpt_keys_and_speakers_can_be_renamed() -> None:
    custom = fmt(
        {
            "type": "sharegpt",
            "field": "items",
            "role_key": "speaker",
            "content_key": "text",
            "roles": {"bot": "assistant"},
        }
    )
    row = {"items": [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "hello"}]}
    assert to_example(custom, row, 1) == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }


@pytest.mark.parametrize(
    ("turns", "words"),
    [
        ([{"from": "wizard", "value": "hi"}], "turn 0 has speaker 'wizard'; use one of"),
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "turn 1 (human): turns must alternate"),
        ([{"from": "gpt", "value": "a"}], "turn 0 (gpt): turns must alternate, and this one should be the user"),
        ([{"from": "human", "value": "a"}], "turn 0 is the user's: a conversation ends on the model's turn"),
        (
            [{"from": "human", "value": "a"}, {"from": "function_call", "value": "get_weather(Paris)"}],
            "turn 1 (function_call): a function_call turn must be JSON",
        ),
        ([{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}], "turn 0 (human): 'value' must be text"),
        ("not a list", "column 'conversations' must be a non-empty list"),
    ],
)
def test_bad_sharegpt_rows_name_the_turn_and_the_value(turns: object, words: str) -> None:
    assert words in refused(ShareGPTFormat(), {"conversations": turns})


def test_alpaca_is_a_conversation_with_history_and_no_stray_newline() -> None:
    row = {"instruction": "Add.", "input": "", "output": "4", "system": "Math.", "history": [["Add 1 and 1.", "2"]]}
    assert to_example(AlpacaFormat(), row, 1) == {
        "messages": [
            {"role": "system", "content": "Math."},
            {"role": "user", "content": "Add 1 and 1."},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "Add."},
            {"role": "assistant", "content": "4"},
        ]
    }
    row = {"instruction": "Add.", "input": "2 and 2", "output": "4"}
    assert to_example(AlpacaFormat(), row, 1)["messages"][0] == {"role": "user", "content": "Add.\n\n2 and 2"}
    renamed = fmt({"type": "alpaca", "columns": {"output": "response"}})
    assert to_example(renamed, {"instruction": "Add.", "response": "4"}, 1)["messages"][-1]["content"] == "4"
    assert "must be a list of [query, response] pairs" in refused(AlpacaFormat(), {**row, "history": [["only one"]]})
    assert "column 'output' is missing or empty" in refused(AlpacaFormat(), {"instruction": "Add."})


def chat(*messages: dict, **row: object) -> dict:
    return {"messages": list(messages), **row}


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("row", "words"),
    [
        (
            chat(USER, {"role": "assistant", "content": "a", "weight": 2}),
            "message 1 (assistant): weight must be 0 or 1",
        ),
        (
            chat({**USER, "weight": 1}, {"role": "assistant", "content": "a"}),
            "weight applies to assistant messages only",
        ),
        (
            chat(USER, {"role": "assistant", "content": "a", "weight": 0}),
            "every assistant message has weight 0: there is nothing left to train on",
        ),
        (
            chat(
                USER,
                {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]},
            ),
            "message 1 (assistant) tool_calls[0]: arguments are not valid JSON: '{x'",
        ),
        (
            chat(USER, {"role": "assistant", "content": None}),
            "message 1 (assistant): content must be a string (null only beside tool_calls)",
        ),
        (
            chat(USER, {"role": "assistant", "content": "a"}, tools='[{"description": "no name"}]'),
            "tools[0] is not a function schema",
        ),
        (chat(USER, {"role": "assistant", "content": "a"}, tools="{not json"), "column 'tools' is not valid JSON"),
        (chat(USER, {"role": "assistant", "content": "a"}, tools={"name": "f"}), "must be a list of function schemas"),
    ],
)
def test_bad_chat_rows_name_the_message_and_the_value(row: dict, words: str) -> None:
    assert words in refused(ChatFormat(), row)


def test_chat_reads_weights_tool_calls_tool_results_and_text_parts() -> None:
    row = chat(
        {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]},
        {"role": "assistant", "content": "Let me look.", "weight": 0},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "weight": 1},
        tools=[{"type": "function", "function": TOOL}],
    )
    example = to_example(ChatFormat(), row, 1)
    messages = example["messages"]
    assert messages[0]["content"] == "Weather in Paris?"
    assert messages[1]["weight"] == 0 and messages[4]["weight"] == 1
    assert messages[2]["tool_calls"][0] == {
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
        "id": "c1",
    }
    assert messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "get_weather"}
    assert example["tools"] == [{"type": "function", "function": TOOL}]
    # train_on_inputs trains the prompts, so a conversation whose answers all have weight 0 still has something
    everything = fmt({"type": "chat", "train_on_inputs": True})
    assert to_example(everything, chat(USER, {"role": "assistant", "content": "a", "weight": 0}), 1)


def test_chat_templates_take_a_built_in_name_and_refuse_unknown_ones() -> None:
    assert fmt({"type": "chat", "chat_template": "chatml"}).chat_template == "chatml"
    with pytest.raises(ValidationError, match="unknown chat template 'chatlm'; built-in ones: alpaca, chatml"):
        fmt({"type": "sharegpt", "chat_template": "chatlm"})

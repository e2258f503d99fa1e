"""What POST /jobs/validate reports for the conversational shapes: trained parts, bad rows, and the template chosen."""

import json
from pathlib import Path

import pytest

from app.core.config import settings
from tests.checks.test_formats import check, spec

SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": "Is the food good?"},
            {"from": "gpt", "value": "The food was terrible."},
        ]
    }
] * 4


def test_sharegpt_shows_the_assistant_turns_as_trained(tiny_model: Path) -> None:
    report = check(spec({"type": "sharegpt"}), SHAREGPT, tiny_model)
    assert report.ok, report.problems
    assert report.examples[0].trained == "The food was terrible.</s>"
    assert "<|user|>\nIs the food good?</s>" in report.examples[0].text


def test_a_bad_row_is_named_with_its_value(tiny_model: Path) -> None:
    rows = [*SHAREGPT, {"conversations": [{"from": "narrator", "value": "Once"}]}]
    report = check(spec({"type": "sharegpt"}), rows, tiny_model)
    assert not report.ok
    assert report.problems[0].row == 5 and "speaker 'narrator'" in report.problems[0].message


def test_weight_0_turns_are_not_in_the_trained_part(tiny_model: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "Is the food good?"},
            {"role": "assistant", "content": "The food was terrible.", "weight": 0},
            {"role": "user", "content": "And the movie?"},
            {"role": "assistant", "content": "This movie was wonderful."},
        ]
    }
    report = check(spec({"type": "chat"}), [row] * 4, tiny_model)
    assert report.ok and report.examples[0].trained == "This movie was wonderful.</s>"
    everything = check(spec({"type": "chat", "train_on_inputs": True}), [row] * 4, tiny_model).examples[0]
    assert "Is the food good?" in everything.trained and "The food was terrible." not in everything.trained


def test_tools_reach_the_template(tiny_model: Path) -> None:
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    row = {"messages": messages, "tools": json.dumps([tool])}
    report = check(spec({"type": "chat"}), [row] * 4, tiny_model)
    assert report.ok and '"name": "get_weather"' in report.examples[0].text


def test_a_model_without_template_needs_one_unless_the_deployment_has_a_default(
    tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_template = spec({"type": "sharegpt"}).model_copy(update={"base_model": "tiny-base"})
    report = check(no_template, SHAREGPT, tiny_base)
    assert not report.ok and report.problems[0].field == "format.chat_template"
    assert "a built-in name (alpaca, chatml, gemma, llama3, phi3, qwen2.5, qwen3)" in report.problems[0].message

    monkeypatch.setattr(settings, "default_chat_template", "chatml")
    report = check(no_template, SHAREGPT, tiny_base)
    assert report.ok, report.problems
    assert any("the deployment's default (chatml, FT_DEFAULT_CHAT_TEMPLATE) is used" in w for w in report.warnings)
    assert report.examples[0].trained == "The food was terrible.<|im_end|>\n"

    named = spec({"type": "sharegpt", "chat_template": "llama3"}).model_copy(update={"base_model": "tiny-base"})
    report = check(named, SHAREGPT, tiny_base)
    assert report.ok and not report.warnings and "<|start_header_id|>assistant" in report.examples[0].text


def test_alpaca_without_a_template_uses_the_plain_layout_and_says_so(tiny_base: Path) -> None:
    rows = [{"instruction": "Is the food good?", "input": "", "output": "No."}] * 4
    no_template = spec({"type": "alpaca"}).model_copy(update={"base_model": "tiny-base"})
    report = check(no_template, rows, tiny_base)
    assert report.ok, report.problems
    assert any("laid out the plain Alpaca way" in w for w in report.warnings)
    assert report.examples[0].text == "### Instruction:\nIs the food good?\n\n### Response:\nNo.</s>"
    assert report.examples[0].trained == "No.</s>"

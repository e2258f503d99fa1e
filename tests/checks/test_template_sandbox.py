"""Chat templates a user chose run in a child process with memory, time and output limits; bombs are problems.

In-process through POST /jobs/validate and POST /jobs (TestClient, migrated SQLite), the real child process,
and the worker's in-process path (tokenize_example without a sandbox).
"""

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app.checks import template_sandbox
from app.checks.chat_templates import TemplateOutputTooLong, render_chat
from app.checks.data import DataSource, ValidationReport, check_data
from app.checks.template_sandbox import TemplateRenderError, is_shipped, render_conversations
from app.checks.tokenization import read_model_tokenizer, tokenize_example
from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.spec.job import JobSpec
from app.spec.templates import named_template
from app.tenants.auth import create_key
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]
MARKERS = "{% generation %}{{ messages[-1].content }}{% endgeneration %}"  # so the checks reach the rendering
PLAIN = (  # an inline template of the kind users bring
    "{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
    "{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
)
LOOP = "{% for a in range(100000) %}{% for b in range(100000) %}BODY{% endfor %}{% endfor %}"  # 10**10 rounds
BOMBS = {  # template, what the problem names
    "memory": ("{{ 'x' * 1000000000 }}" + MARKERS, "FT_TEMPLATE_MEMORY_BYTES"),
    "loop": (LOOP.replace("BODY", "") + MARKERS, "FT_TEMPLATE_RENDER_TIMEOUT_S"),
    "recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}" + MARKERS, "recursed deeper"),
    "output": (LOOP.replace("BODY", "x") + MARKERS, "FT_TEMPLATE_MAX_OUTPUT_CHARS"),
}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Is the food good?"},
    {"role": "assistant", "content": "No."},
    {"role": "user", "content": "And the movie?"},
    {"role": "assistant", "content": "Wonderful."},
]
ROWS = [{"messages": CONVERSATION}] * 6


@pytest.fixture(autouse=True)
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits that keep the bombs short here; the defaults are the same code with larger numbers."""
    monkeypatch.setattr(settings, "template_render_timeout_s", 3.0)
    monkeypatch.setattr(settings, "template_memory_bytes", 256 * 1024**2)


@pytest.fixture(scope="module")
def api(tiny_model: Path) -> Iterator[TestClient]:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
    with SessionLocal() as session:
        key = create_key(session, "sandbox", tenant=f"sandbox-{secrets.token_hex(4)}")
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(api: TestClient) -> str:
    rows = "\n".join(json.dumps(row) for row in ROWS).encode()
    return api.post("/datasets", files={"file": ("chats.jsonl", rows)}).json()["id"]


def body(dataset: str, template: str | None = None) -> dict:
    return {"base_model": TINY_MODEL, "dataset": dataset, "format": {"type": "chat", "chat_template": template}}


def test_the_sandbox_renders_texts_and_spans_as_before(tiny_model: Path) -> None:
    tok = read_model_tokenizer(tiny_model)
    assert tok.chat_template and not is_shipped(tok.chat_template)  # the tiny model's own: sandboxed
    sandboxed = render_conversations(
        tok.chat_template,
        tok.special_tokens,
        [{"messages": CONVERSATION}, {"messages": CONVERSATION[:2], "add_generation_prompt": True}],
    )
    # What render_chat gave before the sandbox existed (the spans are the assistant turns' `{% generation %}`).
    before = "<|system|>\nBe brief.</s><|user|>\nIs the food good?</s><|assistant|>\nNo.</s><|user|>\nAnd the movie?"
    assert sandboxed == [
        (before + "</s><|assistant|>\nWonderful.</s>", [(68, 75), (116, 130)]),
        ("<|system|>\nBe brief.</s><|user|>\nIs the food good?</s><|assistant|>\n", []),
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    qwen = named_template("qwen2.5") + "{# not shipped any more: sandboxed #}"
    for template in (qwen, PLAIN):
        conversations = [{"messages": CONVERSATION, "tools": tools}, {"messages": CONVERSATION[:3]}]
        here = [render_chat(template, c["messages"], {}, c.get("tools"), max_output_chars=10**6) for c in conversations]
        assert render_conversations(template, {}, conversations) == here and here[0][1]


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_template_bombs_are_problems_within_seconds_and_the_api_keeps_serving(
    api: TestClient, dataset: str, bomb: str
) -> None:
    template, words = BOMBS[bomb]
    started = time.monotonic()
    report = api.post("/jobs/validate", json=body(dataset, template))
    assert time.monotonic() - started < settings.template_render_timeout_s + 5
    assert report.status_code == 200 and report.json()["ok"] is False, report.text
    problem = report.json()["problems"][0]
    assert (
        problem["row"] == 1
        and problem["message"].startswith("row 1: the chat template")
        and words in problem["message"]
    )
    assert api.post("/jobs/validate", json=body(dataset, PLAIN)).json()["ok"] is True  # the next request is served


def test_a_bomb_is_422_at_submit(api: TestClient, dataset: str) -> None:
    refused = api.post("/jobs", json=body(dataset, BOMBS["memory"][0]))
    assert refused.status_code == 422 and "more than 256 MiB (FT_TEMPLATE_MEMORY_BYTES)" in refused.json()["detail"]


def test_a_later_row_is_named(tiny_model: Path) -> None:
    template = "{% if messages[0].content == 'boom' %}{{ 'x' * 1000000000 }}{% endif %}" + PLAIN
    rows = [*ROWS[:3], {"messages": [{"role": "user", "content": "boom"}, *CONVERSATION[2:3]]}]
    spec = JobSpec.model_validate(body("ds_000000000000000000000000", template))
    train = DataSource("dataset", "ds_test", rows, ["messages"])
    report = check_data(spec, train, None, lambda: read_model_tokenizer(tiny_model), ValidationReport(ok=False))
    assert report.problems[0].row == 4 and "FT_TEMPLATE_MEMORY_BYTES" in report.problems[0].message


def test_an_over_long_template_is_refused_naming_the_field_and_the_setting(
    api: TestClient, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "template_max_chars", len(PLAIN))
    assert api.post("/jobs/validate", json=body(dataset, PLAIN)).json()["ok"] is True
    for path in ("/jobs/validate", "/jobs"):
        refused = api.post(path, json=body(dataset, PLAIN + " "))
        assert refused.status_code == 422
        problem = refused.json()["problems"][0]
        assert problem["field"] == "format.chat_template" and "(FT_TEMPLATE_MAX_CHARS)" in problem["message"]
    assert api.post("/jobs/validate", json=body(dataset, "qwen2.5")).status_code == 200  # names are short


def test_the_worker_path_stops_at_the_output_cap_too(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "template_max_output_chars", 1000)
    tok = read_model_tokenizer(tiny_model)
    started = time.monotonic()
    with pytest.raises(TemplateOutputTooLong, match=r"more than 1,000 characters \(FT_TEMPLATE_MAX_OUTPUT_CHARS\)"):
        tokenize_example(
            tok, {"messages": CONVERSATION}, chat_template=BOMBS["output"][0], max_length=64, keep_end=False
        )
    assert time.monotonic() - started < 1  # stopped after 1,000 of its 10**10 blocks


def test_shipped_templates_render_in_process_under_the_same_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_sandbox, "_spawn", None)  # a child would fail: none must be started
    chatml = named_template("chatml")
    assert is_shipped(chatml)
    (text, spans), _ = render_conversations(chatml, {}, [{"messages": CONVERSATION}] * 2)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and len(spans) == 2
    monkeypatch.setattr(settings, "template_max_output_chars", 20)
    with pytest.raises(TemplateRenderError) as caught:
        render_conversations(chatml, {}, [{"messages": CONVERSATION}])
    assert caught.value.index == 0 and "FT_TEMPLATE_MAX_OUTPUT_CHARS" in caught.value.message


def test_preference_prompts_and_answers_render_in_the_sandbox(tiny_model: Path) -> None:
    pair = {
        "prompt": CONVERSATION[:2],
        "chosen": [CONVERSATION[2]],
        "rejected": [{"role": "assistant", "content": "Yes."}],
    }
    tok = read_model_tokenizer(tiny_model)
    spec = JobSpec.model_validate(
        {"base_model": TINY_MODEL, "dataset": "ds_000000000000000000000000", "method": {"type": "dpo"},
         "format": {"type": "preference"}}
    )  # fmt: skip
    train = DataSource("dataset", "ds_test", [pair] * 4, ["prompt", "chosen", "rejected"])
    report = check_data(spec, train, None, lambda: tok, ValidationReport(ok=False))
    assert report.ok, report.problems
    head = render_chat(
        tok.chat_template, pair["prompt"], tok.special_tokens, add_generation_prompt=True, max_output_chars=10**6
    )
    assert report.pairs[0].prompt == head[0] and report.pairs[0].chosen.text == "No.</s>"
    bomb = spec.model_copy(update={"format": spec.format.model_copy(update={"chat_template": BOMBS["memory"][0]})})
    report = check_data(bomb, train, None, lambda: tok, ValidationReport(ok=False))
    assert report.problems[0].row == 1 and "FT_TEMPLATE_MEMORY_BYTES" in report.problems[0].message

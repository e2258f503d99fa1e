"""Rows to examples, and a spec's data checks (what POST /jobs/validate reports) on the tiny model's tokenizer."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.checks.data import DataSource, ValidationReport, check_data, packed_rows, percentile, total_steps
from app.checks.tokenization import read_model_tokenizer
from app.spec.examples import RowError, build_examples, render_template, split_eval, to_example
from app.spec.formats import PromptCompletionFormat, TemplateFormat
from app.spec.job import JobSpec
from tests.conftest import TINY_MODEL

QUOTES = [{"quote": f"Quote number {i}.", "tags": ["life", "humor"]} for i in range(10)]


def spec(fmt: dict | None = None, **training: object) -> JobSpec:
    return JobSpec.model_validate(
        {
            "base_model": TINY_MODEL,
            "dataset": "ds_000000000000000000000000",
            "format": fmt or {"type": "template", "template": "{quote} ->: {tags}"},
            "training": training,
        }
    )


def check(s: JobSpec, rows: list[dict], tiny_model: Path, evals: list[dict] | None = None) -> ValidationReport:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    train = DataSource("dataset", "ds_test", rows, columns)
    held = DataSource("validation_dataset", "ds_eval", evals, columns) if evals is not None else None
    return check_data(s, train, held, lambda: read_model_tokenizer(tiny_model), ValidationReport(ok=False))


def test_template_renders_lists_like_the_seed_notebook() -> None:
    row = {"quote": "So many books.", "tags": ["books", "humor"]}
    assert render_template("{quote} ->: {tags}", row, 1) == "So many books. ->: ['books', 'humor']"
    assert render_template("{{literal}} {quote}", row, 1) == "{literal} So many books."


@pytest.mark.parametrize("template", ["{quote.__class__}", "{quote[0]}", "{quote!r}", "{quote:>10}", "{", "no fields"])
def test_templates_cannot_reach_into_objects(template: str) -> None:
    with pytest.raises(ValidationError):
        TemplateFormat(template=template)


def test_row_errors_name_the_row_and_the_problem() -> None:
    fmt = PromptCompletionFormat(prompt="{q}", completion="{a}")
    examples, errors = build_examples(fmt, [{"q": "x", "a": "y"}, {"q": "x"}, {"q": "x", "a": None}])
    assert examples == [{"prompt": "x", "completion": "y"}]
    assert [str(e) for e in errors] == ["row 2: column 'a' is missing or null", "row 3: column 'a' is missing or null"]


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([{"role": "wizard", "content": "hi"}], "message 0 has role 'wizard'"),
        ([{"role": "user", "content": "hi"}], "no assistant message"),
        ([{"role": "assistant", "content": 3}], "content must be a string"),
        ("not a list", "must be a non-empty list"),
    ],
)
def test_chat_rows_are_checked(messages: object, words: str) -> None:
    with pytest.raises(RowError, match=words):
        to_example(spec({"type": "chat"}).format, {"messages": messages}, 4)


def test_eval_split_is_seeded_and_keeps_both_sides() -> None:
    examples = [{"text": str(i)} for i in range(10)]
    train, held = split_eval(examples, 0.2, seed=7)
    assert len(held) == 2 and len(train) == 8 and split_eval(examples, 0.2, seed=7) == (train, held)
    assert split_eval(examples[:2], 0.9, seed=1)[0]  # never everything held out


def test_step_arithmetic() -> None:
    assert total_steps(spec(batch_size=4, gradient_accumulation_steps=2, epochs=3), 9) == 6  # 3 x ceil(3/2)
    assert total_steps(spec(batch_size=4, epochs=0.5), 40) == 5
    assert total_steps(spec(max_steps=7), 1000) == 7
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([5], 95) == 5
    assert packed_rows([5, 5, 3, 3, 9, 20], 10) == 4  # [10], [9], [5,5], [3,3]


def test_report_for_a_good_template_job(tiny_model: Path) -> None:
    report = check(spec(batch_size=2, eval_fraction=0.2), QUOTES, tiny_model)
    assert report.ok, report.problems
    assert (report.train_examples, report.eval_examples, report.total_steps) == (8, 2, 4)
    first = report.examples[0]
    assert first.row == 1 and first.text == "Quote number 0. ->: ['life', 'humor']</s>" == first.trained
    lengths = report.token_lengths
    assert lengths and 0 < lengths.min <= lengths.p50 <= lengths.p95 <= lengths.max and report.truncated == 0


def test_report_marks_the_completion_and_counts_truncation(tiny_model: Path) -> None:
    rows = [{"prompt": "The food was", "completion": " terrible."}, {"prompt": "A journey " * 20, "completion": " x"}]
    report = check(spec({"type": "prompt_completion"}, max_seq_length=16, batch_size=1), rows, tiny_model)
    assert report.ok
    assert report.examples[0].text == "The food was terrible.</s>" and report.examples[0].trained == " terrible.</s>"
    assert report.truncated == 1 and report.dropped == 1 and report.total_steps == 1
    assert any("rows 2" in w for w in report.warnings)


def test_report_marks_assistant_turns(tiny_model: Path) -> None:
    messages = [
        {"role": "user", "content": "Is it good?"},
        {"role": "assistant", "content": "It is wonderful."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    report = check(spec({"type": "chat"}), [{"messages": messages}], tiny_model)
    assert report.ok, report.problems
    assert report.examples[0].trained == "It is wonderful.</s> … Yes.</s>"
    assert report.examples[0].text.startswith("<|user|>\nIs it good?</s><|assistant|>\nIt is")


def test_chat_without_a_usable_template_is_a_problem(tiny_model: Path) -> None:
    no_markers = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    report = check(
        spec({"type": "chat", "chat_template": no_markers}),
        [{"messages": [{"role": "assistant", "content": "x"}]}],
        tiny_model,
    )
    assert not report.ok and report.problems[0].field == "format.chat_template"
    assert "{% generation %}" in report.problems[0].message


def test_every_problem_is_listed(tiny_model: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
    rows += [{"messages": [{"role": "robot", "content": "beep"}]}, {"messages": []}]
    report = check(spec({"type": "chat"}), rows, tiny_model)
    assert not report.ok
    assert [p.row for p in report.problems] == [4, 5] and "role 'robot'" in report.problems[0].message
    assert "row 4" in report.summary()
    missing = check(spec({"type": "template", "template": "{quote} {nope}"}), QUOTES, tiny_model)
    assert missing.problems[0].field == "format" and "'nope'" in missing.problems[0].message


def test_validation_dataset_rows_are_checked_and_counted(tiny_model: Path) -> None:
    report = check(spec(batch_size=4), QUOTES, tiny_model, evals=[{"quote": "Held out.", "tags": []}, {"tags": []}])
    assert not report.ok and report.problems[0].message == "validation_dataset row 2: column 'quote' is missing or null"
    report = check(spec(batch_size=4), QUOTES, tiny_model, evals=QUOTES[:3])
    assert report.ok and (report.train_examples, report.eval_examples, report.total_steps) == (10, 3, 3)


def test_the_api_never_imports_the_training_stack() -> None:
    code = (
        "import sys, app.main, app.checks.data, app.datasets.hub\n"
        "print(sorted({'torch', 'transformers', 'trl', 'datasets', 'worker'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"

"""A job spec checked against its data before a GPU is spent: POST /jobs/validate shows it, POST /jobs enforces it.

Each row is rendered exactly as the worker will render it (app.spec.examples) and tokenized as TRL's SFTTrainer will
(app.checks.tokenization), so the report's examples, token lengths, truncation and step count are the job's own.
"""

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.checks.preference import check_preference
from app.checks.report import ExamplePreview, Problem, TokenLengths, ValidationReport
from app.checks.template_sandbox import TemplateRenderError
from app.checks.tokenization import (
    ModelTokenizer,
    Tokenized,
    choose_chat_template,
    describe,
    has_generation_markers,
    render_examples,
    tokenize_example,
)
from app.spec.examples import RowError, eval_split_indices, to_example
from app.spec.formats import CONVERSATIONAL
from app.spec.job import JobSpec
from app.spec.templates import template_names

__all__ = ["DataSource", "ExamplePreview", "Problem", "TokenLengths", "ValidationReport", "check_data"]

MAX_ROW_PROBLEMS = 20  # listed one by one; the rest are counted
PREVIEW_EXAMPLES = 3
MAX_TOKENIZED_ROWS = 20_000  # enough for the statistics; tokenizing more would make a request slow


@dataclass
class DataSource:
    """One side of the data as the checks see it: rows and columns, or why they could not be had."""

    field: str  # "dataset" or "validation_dataset"
    label: str  # how messages name it: "dataset ds_..." or "hub dataset owner/name"
    rows: list[dict[str, Any]] | None
    columns: list[str] = field(default_factory=list)


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def packed_rows(lengths: list[int], max_length: int) -> int:
    """How many sequences best-fit-decreasing packing (TRL's `bfd`) makes of these lengths."""
    free: list[int] = []  # remaining space of each bin, kept sorted
    for length in sorted((min(n, max_length) for n in lengths), reverse=True):
        i = bisect.bisect_left(free, length)
        space = free.pop(i) - length if i < len(free) else max_length - length
        bisect.insort(free, space)
    return len(free)


def total_steps(spec: JobSpec, train_rows: int) -> int:
    """What the Trainer will run: max_steps, else epochs x optimizer steps per epoch (last batch kept)."""
    t = spec.training
    if t.max_steps:
        return t.max_steps
    per_epoch = max(math.ceil(math.ceil(train_rows / t.batch_size) / t.gradient_accumulation_steps), 1)
    return math.ceil(t.epochs * per_epoch)


def missing_columns(columns: list[str], source: DataSource) -> Problem | None:
    """The problem of a format naming columns the data does not have, or None."""
    missing = [c for c in columns if c not in source.columns]
    if not missing:
        return None
    return Problem(
        field="format",
        message=f"column(s) {', '.join(map(repr, missing))} not in {source.field} {source.label} "
        f"(its columns: {', '.join(source.columns)})",
    )


def _examples(spec: JobSpec, source: DataSource, report: ValidationReport) -> list[tuple[int, dict]]:
    if (problem := missing_columns(spec.format.columns(), source)) is not None:
        report.problems.append(problem)
        return []
    examples, errors = [], []
    for number, row in enumerate(source.rows or [], start=1):
        try:
            examples.append((number, to_example(spec.format, row, number)))
        except RowError as exc:
            errors.append(exc)
    for exc in errors[:MAX_ROW_PROBLEMS]:
        prefix = "" if source.field == "dataset" else f"{source.field} "
        report.problems.append(Problem(row=exc.row, message=f"{prefix}row {exc.row}: {exc.message}"))
    if len(errors) > MAX_ROW_PROBLEMS:
        report.problems.append(
            Problem(field=source.field, message=f"{len(errors) - MAX_ROW_PROBLEMS} more rows with problems")
        )
    return examples


def _chat_template(spec: JobSpec, tok: ModelTokenizer, report: ValidationReport) -> str | None:
    if not isinstance(spec.format, CONVERSATIONAL):
        return None
    try:
        choice = choose_chat_template(spec.format, spec.base_model, tok.chat_template)
    except ValueError as exc:  # FT_DEFAULT_CHAT_TEMPLATE names no built-in template: the deployment's to fix
        report.problems.append(Problem(field="format.chat_template", message=f"FT_DEFAULT_CHAT_TEMPLATE: {exc}"))
        return None
    if choice.warning:
        report.warnings.append(choice.warning)
    if choice.template is None:
        report.problems.append(
            Problem(
                field="format.chat_template",
                message=f"{spec.base_model!r} has no chat template: give format.chat_template, a built-in name "
                f"({', '.join(template_names())}) or Jinja with {{% generation %}}...{{% endgeneration %}} around "
                "assistant content",
            )
        )
    elif not has_generation_markers(choice.template):
        report.problems.append(
            Problem(
                field="format.chat_template",
                message="the chat template has no {% generation %} markers, so assistant turns cannot be told "
                "apart for the loss: give format.chat_template with {% generation %}...{% endgeneration %} "
                "around each assistant message, or a built-in name "
                f"({', '.join(template_names())})",
            )
        )
    return choice.template


def _has_tools(example: dict[str, Any]) -> bool:
    return "tools" in example or any("tool_calls" in m for m in example.get("messages", ()))


def _tokenize(
    spec: JobSpec, tok: ModelTokenizer, template: str | None, examples: list[tuple[int, dict]], report: ValidationReport
) -> list[Tokenized]:
    t = spec.training
    keep_end = t.truncation_side == "left" and not t.packing
    train_on_inputs = getattr(spec.format, "train_on_inputs", False)
    if template and "tool" not in template and any(_has_tools(example) for _, example in examples):
        report.warnings.append("the chat template renders no tools or tool calls: the model will not see them")
    out, batch = [], examples[:MAX_TOKENIZED_ROWS]
    try:  # every row in one sandbox run, which stops a template that uses too much memory or time
        rendered = render_examples(tok, template, [example for _, example in batch])
    except TemplateRenderError as exc:
        number = batch[exc.index][0]
        report.problems.append(Problem(field="format", row=number, message=f"row {number}: {exc.message}"))
        return []
    for (number, example), chat in zip(batch, rendered, strict=True):
        try:
            item = tokenize_example(
                tok,
                example,
                chat_template=template,
                max_length=t.max_seq_length,
                keep_end=keep_end,
                train_on_inputs=train_on_inputs,
                rendered=chat,
            )
            out.append(item)
        except Exception as exc:  # a template error (raise_exception, bad syntax) is the user's template at fault
            report.problems.append(Problem(field="format", row=number, message=f"row {number}: {exc}"))
            return []
    if len(examples) > MAX_TOKENIZED_ROWS:
        report.warnings.append(
            f"token lengths, truncation and skipped examples cover the first {MAX_TOKENIZED_ROWS:,} training examples"
        )
    return out


def check_data(
    spec: JobSpec,
    train: DataSource,
    evals: DataSource | None,
    load_tokenizer: Callable[[], ModelTokenizer | None],
    report: ValidationReport,
) -> ValidationReport:
    """Render every row, split, tokenize and count; problems and warnings go into `report`."""
    examples = _examples(spec, train, report) if train.rows is not None else []
    eval_examples = _examples(spec, evals, report) if evals is not None and evals.rows is not None else []
    if evals is None and spec.training.eval_fraction > 0 and train.rows is not None and len(examples) < 2:
        report.problems.append(Problem(field="training.eval_fraction", message="needs at least 2 rows to split"))
    held_out = (
        set()
        if evals is not None
        else eval_split_indices(len(examples), spec.training.eval_fraction, spec.training.seed)
    )
    train_examples = [e for i, e in enumerate(examples) if i not in held_out]
    report.train_examples = len(train_examples) if train.rows is not None else None
    report.eval_examples = (
        (len(eval_examples) if evals is not None else len(held_out)) if train.rows is not None else None
    )
    if report.problems or train.rows is None:
        return _finish(spec, report, None)
    tok = load_tokenizer()
    if tok is None:
        return _finish(spec, report, None)
    if spec.method.type != "sft":
        check_preference(spec, tok, train_examples, report)
        return _finish(spec, report, None)
    template = _chat_template(spec, tok, report)
    if report.problems:
        return _finish(spec, report, None)
    tokenized = _tokenize(spec, tok, template, train_examples, report)
    if not tokenized:
        return _finish(spec, report, None)
    _token_statistics(spec, tok, train_examples, tokenized, report)
    return _finish(spec, report, tokenized)


def _token_statistics(
    spec: JobSpec,
    tok: ModelTokenizer,
    examples: list[tuple[int, dict]],
    items: list[Tokenized],
    report: ValidationReport,
) -> None:
    t = spec.training
    lengths = sorted(item.full_length for item in items)
    report.token_lengths = TokenLengths(
        min=lengths[0], p50=percentile(lengths, 50), p95=percentile(lengths, 95), max=lengths[-1]
    )
    report.truncated = sum(item.truncated for item in items)
    if report.truncated:
        side = "end" if t.truncation_side == "right" else "start"
        report.warnings.append(
            f"{report.truncated} of {len(items)} training examples are longer than training.max_seq_length "
            f"({t.max_seq_length} tokens) and lose their {side}"
        )
    dropped = [number for (number, _), item in zip(examples, items, strict=False) if not any(item.trained)]
    report.dropped = 0 if t.packing else len(dropped)
    if report.dropped:
        rows = ", ".join(map(str, dropped[:10])) + (" ..." if len(dropped) > 10 else "")
        report.warnings.append(
            f"{len(dropped)} examples keep no trained token after truncation and are skipped (rows {rows}); "
            "raise training.max_seq_length or shorten the prompts"
        )
        if len(dropped) == len(items):
            report.problems.append(
                Problem(field="training.max_seq_length", message="no example keeps a trained token after truncation")
            )
    for (number, _), item in list(zip(examples, items, strict=False))[:PREVIEW_EXAMPLES]:
        report.examples.append(
            ExamplePreview(
                row=number,
                tokens=len(item.ids),
                trained_tokens=sum(item.trained),
                truncated=item.truncated,
                **describe(tok, item),
            )
        )


def _finish(spec: JobSpec, report: ValidationReport, items: list[Tokenized] | None) -> ValidationReport:
    t = spec.training
    if report.train_examples is not None:
        rows = report.train_examples - (report.dropped or 0)
        if t.packing and items:
            rows = packed_rows([item.full_length for item in items], t.max_seq_length)
        report.total_steps = total_steps(spec, rows) if rows > 0 else None
    elif t.max_steps:
        report.total_steps = t.max_steps
    report.ok = not report.problems
    return report

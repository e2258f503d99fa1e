"""The checks of a classification spec against its data (POST /jobs and POST /jobs/validate): columns, labels,
class balance and token lengths. Labels are read as the worker reads them (app/spec/labels.py)."""

from collections import Counter
from collections.abc import Callable

from app.checks.data import (
    MAX_ROW_PROBLEMS,
    PREVIEW_EXAMPLES,
    DataSource,
    ExamplePreview,
    Problem,
    TokenLengths,
    ValidationReport,
    missing_columns,
    percentile,
    total_steps,
)
from app.checks.tokenization import ModelTokenizer
from app.spec.examples import RowError, eval_split_indices
from app.spec.job import JobSpec
from app.spec.labels import Labelled, label_id, label_names, row_text


def _rows(spec: JobSpec, source: DataSource, labels: list[str], report: ValidationReport) -> list[tuple[int, Labelled]]:
    fmt = spec.format
    if (problem := missing_columns(fmt.columns(), source)) is not None:
        report.problems.append(problem)
        return []
    numbered, errors = [], []
    for number, row in enumerate(source.rows or [], start=1):
        try:
            numbered.append((number, (row_text(fmt, row, number), label_id(fmt, labels, row, number))))
        except RowError as exc:
            errors.append(exc)
    prefix = "" if source.field == "dataset" else f"{source.field} "
    for exc in errors[:MAX_ROW_PROBLEMS]:
        report.problems.append(Problem(row=exc.row, message=f"{prefix}row {exc.row}: {exc.message}"))
    if len(errors) > MAX_ROW_PROBLEMS:
        report.problems.append(
            Problem(field=source.field, message=f"{len(errors) - MAX_ROW_PROBLEMS} more rows with problems")
        )
    return numbered


def _check_labels(labels: list[str], train: list[tuple[int, Labelled]], report: ValidationReport) -> None:
    counts = Counter(label for _, (_, label) in train)
    if len(counts) < 2:
        found = ", ".join(repr(labels[i]) for i in counts) or "none"
        report.problems.append(
            Problem(field="format.label", message=f"a classifier needs at least 2 different labels; found {found}")
        )
        return
    unused = [name for i, name in enumerate(labels) if i not in counts]
    if unused:
        report.warnings.append(f"format.labels {', '.join(map(repr, unused))} never occur in the training data")
    report.warnings.append("labels: " + ", ".join(f"{labels[i]} ({counts[i]})" for i in sorted(counts)))


def check_classification(
    spec: JobSpec,
    train: DataSource,
    evals: DataSource | None,
    load_tokenizer: Callable[[], ModelTokenizer | None],
    report: ValidationReport,
) -> ValidationReport:
    """The classification counterpart of `check_data`: columns, labels, rows, token lengths and steps."""
    labels = label_names(spec.format, train.rows or [])
    rows = _rows(spec, train, labels, report) if train.rows is not None else []
    if rows and not report.problems:
        _check_labels(labels, rows, report)
    eval_rows = _rows(spec, evals, labels, report) if evals is not None and evals.rows is not None else []
    held_out = set()
    if evals is None:
        held_out = eval_split_indices(len(rows), spec.training.eval_fraction, spec.training.seed)
    train_rows = [r for i, r in enumerate(rows) if i not in held_out]
    if train.rows is not None:
        report.train_examples = len(train_rows)
        report.eval_examples = len(eval_rows) if evals is not None else len(held_out)
    if not report.problems and train_rows and (tok := load_tokenizer()) is not None:
        _token_statistics(spec, tok, labels, train_rows, report)
    if report.train_examples:
        report.total_steps = total_steps(spec, report.train_examples)
    elif spec.training.max_steps:
        report.total_steps = spec.training.max_steps
    report.ok = not report.problems
    return report


def _token_statistics(
    spec: JobSpec, tok: ModelTokenizer, labels: list[str], rows: list[tuple[int, Labelled]], report: ValidationReport
) -> None:
    max_length = spec.training.max_seq_length
    lengths = [len(tok.tokenizer.encode(text).ids) for _, (text, _) in rows]
    ordered = sorted(lengths)
    report.token_lengths = TokenLengths(
        min=ordered[0], p50=percentile(ordered, 50), p95=percentile(ordered, 95), max=ordered[-1]
    )
    report.truncated = sum(n > max_length for n in lengths)
    report.dropped = 0
    if report.truncated:
        side = "end" if spec.training.truncation_side == "right" else "start"
        report.warnings.append(
            f"{report.truncated} of {len(rows)} texts are longer than training.max_seq_length ({max_length} tokens) "
            f"and lose their {side}"
        )
    for (number, (text, label)), length in list(zip(rows, lengths, strict=True))[:PREVIEW_EXAMPLES]:
        report.examples.append(
            ExamplePreview(
                row=number,
                text=text,
                trained=labels[label],  # the label carries the loss; no token of the text does
                tokens=min(length, max_length),
                trained_tokens=0,
                truncated=length > max_length,
            )
        )

"""Classification rows -> (text, label id): label names in a stable order, ids, texts. Shared by the checks of
POST /jobs/validate and the classification recipe, so both see the same labels."""

from typing import Any

from app.spec.examples import RowError, render_template
from app.spec.formats import ClassificationFormat

Labelled = tuple[str, int]  # (text, label id)


def _label_value(fmt: ClassificationFormat, row: dict[str, Any], row_number: int) -> str | int:
    value = row.get(fmt.label)
    if value is None or value == "":
        raise RowError(row_number, f"label column {fmt.label!r} is missing or null")
    if isinstance(value, bool) or not isinstance(value, int | str):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return str(value)
    return value


def _sort_key(name: str) -> tuple[int, int, str]:
    """Numbers in numeric order (`2` before `10`), then text."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def label_names(fmt: ClassificationFormat, rows: list[dict[str, Any]]) -> list[str]:
    """`format.labels`, else the training data's distinct labels, sorted (rows without a label are skipped)."""
    if fmt.labels is not None:
        return list(fmt.labels)
    found = set()
    for number, row in enumerate(rows, start=1):
        try:
            found.add(str(_label_value(fmt, row, number)))
        except RowError:
            continue
    return sorted(found, key=_sort_key)


def label_id(fmt: ClassificationFormat, labels: list[str], row: dict[str, Any], row_number: int) -> int:
    """The row's label as an index into `labels`; an integer indexes `format.labels` when it is not a name."""
    value = _label_value(fmt, row, row_number)
    if str(value) in labels:
        return labels.index(str(value))
    as_int = value if isinstance(value, int) else int(value) if value.lstrip("-").isdigit() else None
    if fmt.labels is not None and as_int is not None and 0 <= as_int < len(labels):
        return as_int
    known = ", ".join(map(repr, labels[:10])) + (" ..." if len(labels) > 10 else "")
    raise RowError(row_number, f"label {value!r} is not one of the labels ({known})")


def row_text(fmt: ClassificationFormat, row: dict[str, Any], row_number: int) -> str:
    text = render_template(fmt.text_template(), row, row_number)
    if not text.strip():
        raise RowError(row_number, "the text to classify is empty")
    return text


def labelled_rows(
    fmt: ClassificationFormat, rows: list[dict[str, Any]], labels: list[str]
) -> tuple[list[Labelled], list[RowError]]:
    """Every row as (text, label id); rows that cannot be are returned as errors (never silently dropped)."""
    examples, errors = [], []
    for number, row in enumerate(rows, start=1):
        try:
            examples.append((row_text(fmt, row, number), label_id(fmt, labels, row, number)))
        except RowError as exc:
            errors.append(exc)
    return examples, errors

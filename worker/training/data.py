"""Rows in, training examples out: each spec format becomes the dataset shape TRL's SFTTrainer expects.

The rendering itself lives in app.spec.examples, shared with the API's checks (POST /jobs/validate), so a job trains
on exactly the examples its validation showed.
"""

import json
from pathlib import Path
from typing import Any

from app.core.errors import DomainError
from app.datasets.hub import HubUnavailable, load_hub_dataset
from app.spec import examples as shared
from app.spec.examples import Example
from app.spec.formats import ChatFormat, HubDataset
from app.spec.job import JobSpec
from worker.training.errors import TrainingError


def read_rows(path: Path) -> list[dict[str, Any]]:
    """An uploaded dataset, as normalised by the API: one JSON object per line."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_hub_rows(ref: HubDataset) -> list[dict[str, Any]]:
    """A Hugging Face Hub dataset's split by name, from huggingface_hub's cache or downloaded into it."""
    try:
        return load_hub_dataset(ref).rows
    except HubUnavailable as exc:
        raise TrainingError("dataset_not_found", f"could not load hub dataset {ref.hub!r}: {exc}") from exc
    except DomainError as exc:
        raise TrainingError("dataset_error", exc.detail) from exc


def load_rows(ref: str | HubDataset, path: Path | None) -> list[dict[str, Any]]:
    """A job's dataset rows: a Hub dataset's split, else the uploaded dataset's file at `path`."""
    if isinstance(ref, HubDataset):
        return load_hub_rows(ref)
    if path is None:
        raise TrainingError("dataset_error", f"dataset {ref} has no file")
    return read_rows(path)


def to_example(fmt: Any, row: dict[str, Any], row_number: int) -> Example:
    """One training example in TRL's shapes: {text}, {prompt, completion} or {messages}."""
    try:
        return shared.to_example(fmt, row, row_number)
    except shared.RowError as exc:
        raise TrainingError("dataset_error", str(exc)) from None


def build_examples(spec: JobSpec, rows: list[dict[str, Any]]) -> list[Example]:
    """Every row as an example; the first bad row fails the job, named by its number."""
    if not rows:
        raise TrainingError("dataset_error", "the dataset has no rows")
    examples, errors = shared.build_examples(spec.format, rows)
    if errors:
        more = f" (and {len(errors) - 1} more rows)" if len(errors) > 1 else ""
        raise TrainingError("dataset_error", f"{errors[0]}{more}")
    return examples


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded train/eval split; at least one example on each side."""
    if fraction > 0 and len(examples) < 2:
        raise TrainingError("dataset_error", "training.eval_fraction needs at least 2 rows")
    return shared.split_eval(examples, fraction, seed)


def use_chat_template(spec: JobSpec, tokenizer: Any) -> None:
    """Chat jobs: the spec's template wins over the tokenizer's; having none at all is the user's to fix."""
    if not isinstance(spec.format, ChatFormat):
        return
    if spec.format.chat_template:
        tokenizer.chat_template = spec.format.chat_template
    if not tokenizer.chat_template:
        raise TrainingError(
            "invalid_spec",
            f"{spec.base_model!r} has no chat template: give one in format.chat_template "
            "(Jinja, with {% generation %}...{% endgeneration %} around assistant content)",
        )

"""Rows in, training examples out: each spec format becomes the dataset shape TRL's SFTTrainer expects.

The rendering itself lives in app.spec.examples, shared with the API's checks (POST /jobs/validate), so a job trains
on exactly the examples its validation showed.
"""

import json
from pathlib import Path
from typing import Any

from datasets import Dataset

from app.checks.tokenization import ModelTokenizer, choose_chat_template, tokenize_example
from app.core.errors import DomainError
from app.datasets import access as hub_access
from app.datasets.hub import HubUnavailable, load_hub_dataset
from app.spec import examples as shared
from app.spec.examples import Example
from app.spec.formats import CONVERSATIONAL, HubDataset
from app.spec.job import JobSpec
from worker.training.errors import TrainingError

UNTRUNCATED = 1 << 30  # the trainer truncates, to max_seq_length on the side the spec says


def read_rows(path: Path) -> list[dict[str, Any]]:
    """An uploaded dataset, as normalised by the API: one JSON object per line."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_hub_rows(ref: HubDataset) -> list[dict[str, Any]]:
    """A Hugging Face Hub dataset's split by name, read as the job's tenant (its allow-list, checked again here,
    its size limit, its Hub token): listed first, then only the split's files downloaded, whatever their size."""
    access = hub_access.current()
    try:
        hub_access.check_hub_repo(access, ref.hub, "hub dataset")
    except DomainError as exc:
        raise TrainingError("invalid_spec", exc.detail) from None
    try:
        return load_hub_dataset(ref, access).rows
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


def train_and_eval_examples(
    spec: JobSpec, dataset_path: Path | None, validation_path: Path | None
) -> tuple[list[Example], list[Example]]:
    """The job's train and eval examples: the validation dataset's, else a seeded split of the dataset's."""
    examples = build_examples(spec, load_rows(spec.dataset, dataset_path))
    if spec.validation_dataset is not None:
        return examples, build_examples(spec, load_rows(spec.validation_dataset, validation_path))
    return split_eval(examples, spec.training.eval_fraction, spec.training.seed)


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded train/eval split; at least one example on each side."""
    if fraction > 0 and len(examples) < 2:
        raise TrainingError("dataset_error", "training.eval_fraction needs at least 2 rows")
    return shared.split_eval(examples, fraction, seed)


def use_chat_template(spec: JobSpec, tokenizer: Any) -> None:
    """Conversational jobs: the template the API's checks chose (app.checks.tokenization.choose_chat_template) goes
    on the tokenizer, so training, the saved adapter and generation all use it; having none is the user's to fix."""
    if not isinstance(spec.format, CONVERSATIONAL):
        return
    try:
        choice = choose_chat_template(spec.format, spec.base_model, tokenizer.chat_template)
    except ValueError as exc:
        raise TrainingError("invalid_spec", str(exc)) from None
    if not choice.template:
        raise TrainingError(
            "invalid_spec",
            f"{spec.base_model!r} has no chat template: give one in format.chat_template "
            "(a built-in name such as `chatml`, or Jinja with {% generation %}...{% endgeneration %} around assistant "
            "content)",
        )
    tokenizer.chat_template = choice.template


def model_tokenizer(tokenizer: Any) -> ModelTokenizer:
    """The checks' view of a loaded transformers tokenizer: its `tokenizers` backend, special tokens and template."""
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return ModelTokenizer(tokenizer.backend_tokenizer, special, tokenizer.chat_template)


def tokenized(spec: JobSpec, tokenizer: Any, examples: list[Example]) -> Dataset:
    """Examples as `input_ids` and `labels` (-100 where no loss), tokenized by the very function POST /jobs/validate
    shows them with; TRL's SFTTrainer then truncates, drops what has nothing left to train on, and packs.

    Per-message weights, tools and `train_on_inputs` exist only here: TRL's own preparation has none of them.
    """
    tok = model_tokenizer(tokenizer)
    train_on_inputs = getattr(spec.format, "train_on_inputs", False)
    rows = []
    for number, example in enumerate(examples, start=1):
        try:
            item = tokenize_example(
                tok,
                example,
                chat_template=tokenizer.chat_template,
                max_length=UNTRUNCATED,
                keep_end=False,
                train_on_inputs=train_on_inputs,
            )
        except Exception as exc:  # the chat template raised (raise_exception) on this row
            raise TrainingError("dataset_error", f"example {number}: {exc}") from None
        rows.append(
            {"input_ids": item.ids, "labels": [i if t else -100 for i, t in zip(item.ids, item.trained, strict=True)]}
        )
    return Dataset.from_list(rows)

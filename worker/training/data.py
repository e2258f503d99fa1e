"""Rows in, training examples out: each spec format becomes the dataset shape TRL's SFTTrainer expects."""

import json
import string
from pathlib import Path
from typing import Any

from app.spec import ChatFormat, HubDataset, JobSpec, PromptCompletionFormat, TemplateFormat, TextFormat
from worker.training.errors import TrainingError

CHAT_ROLES = {"system", "user", "assistant", "tool", "developer"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """An uploaded dataset, as normalised by the API: one JSON object per line."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_hub_rows(ref: HubDataset) -> list[dict[str, Any]]:
    """A Hugging Face Hub dataset by name (or a `save_to_disk` copy under HF_DATASETS_LOCAL)."""
    import datasets

    try:
        data = datasets.load_dataset(ref.hub, split=ref.split)
    except Exception as exc:  # datasets raises many types for a missing repo, split or network
        raise TrainingError(
            "dataset_not_found", f"could not load hub dataset {ref.hub!r} split {ref.split!r}: {exc}"
        ) from exc
    return list(data)


def render_template(template: str, row: dict[str, Any], row_number: int) -> str:
    """Fill `{column}` fields from a row; lists and dicts render as Python shows them (`['a', 'b']`)."""
    parts = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is None:
            continue
        if row.get(name) is None:
            raise TrainingError("dataset_error", f"row {row_number}: column {name!r} is missing or null")
        value = row[name]
        parts.append(value if isinstance(value, str) else str(value))
    return "".join(parts)


def _chat_messages(row: dict[str, Any], field: str, row_number: int) -> list[dict[str, str]]:
    messages = row.get(field)
    if not isinstance(messages, list) or not messages:
        raise TrainingError("dataset_error", f"row {row_number}: {field!r} must be a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise TrainingError(
                "dataset_error",
                f"row {row_number}, message {i}: role must be one of {', '.join(sorted(CHAT_ROLES))}",
            )
        if not isinstance(message.get("content"), str):
            raise TrainingError("dataset_error", f"row {row_number}, message {i}: content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise TrainingError("dataset_error", f"row {row_number}: no assistant message to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def to_example(fmt: Any, row: dict[str, Any], row_number: int) -> dict[str, Any]:
    """One training example in TRL's shapes: {text}, {prompt, completion} or {messages}."""
    if isinstance(fmt, TextFormat):
        value = row.get(fmt.field)
        if not isinstance(value, str) or not value:
            raise TrainingError("dataset_error", f"row {row_number}: column {fmt.field!r} must be non-empty text")
        return {"text": value}
    if isinstance(fmt, TemplateFormat):
        return {"text": render_template(fmt.template, row, row_number)}
    if isinstance(fmt, PromptCompletionFormat):
        return {
            "prompt": render_template(fmt.prompt, row, row_number),
            "completion": render_template(fmt.completion, row, row_number),
        }
    if isinstance(fmt, ChatFormat):
        return {"messages": _chat_messages(row, fmt.field, row_number)}
    raise TrainingError("invalid_spec", f"unsupported format {fmt!r}")


def build_examples(spec: JobSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        raise TrainingError("dataset_error", "the dataset has no rows")
    return [to_example(spec.format, row, i) for i, row in enumerate(rows, start=1)]


def split_eval(examples: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """A seeded train/eval split; at least one example on each side."""
    if fraction <= 0:
        return examples, []
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(examples) * fraction)), len(examples) - 1)
    if n_eval < 1:
        raise TrainingError("dataset_error", "eval_fraction needs at least 2 rows")
    eval_idx = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in eval_idx]
    return train, [examples[i] for i in sorted(eval_idx)]

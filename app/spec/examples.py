"""Rows to training examples in TRL's shapes ({text}, {prompt, completion}, {messages}), shared by API and worker.

The API's checks (POST /jobs/validate) and the worker's recipe both call these functions, so what a user is
shown before submitting is what the trainer is given.
"""

import random
import string
from dataclasses import dataclass
from typing import Any

from app.spec.formats import ChatFormat, PromptCompletionFormat, TemplateFormat, TextFormat

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
Example = dict[str, Any]


@dataclass
class RowError(Exception):
    """A row that cannot become an example; `row` counts from 1 in the order rows were uploaded."""

    row: int
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"


def render_value(value: Any) -> str:
    """A cell as text: strings as they are, anything else the way Python prints it (`['a', 'b']`).

    This matches the seed notebook's `example["quote"] + " ->: " + str(example["tags"])`.
    """
    return value if isinstance(value, str) else str(value)


def render_template(template: str, row: dict[str, Any], row_number: int) -> str:
    """Fill `{column}` fields from a row by name only: no attribute or index access reaches the values."""
    parts = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is None:
            continue
        if row.get(name) is None:
            raise RowError(row_number, f"column {name!r} is missing or null")
        parts.append(render_value(row[name]))
    return "".join(parts)


def chat_messages(row: dict[str, Any], field: str, row_number: int) -> list[dict[str, str]]:
    """OpenAI-style messages, checked: known roles, string content, at least one assistant turn."""
    messages = row.get(field)
    if not isinstance(messages, list) or not messages:
        raise RowError(row_number, f"column {field!r} must be a non-empty list of {{role, content}} messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowError(row_number, f"message {i} must be an object with role and content")
        if message.get("role") not in CHAT_ROLES:
            raise RowError(
                row_number, f"message {i} has role {message.get('role')!r}; use one of {', '.join(CHAT_ROLES)}"
            )
        if not isinstance(message.get("content"), str):
            raise RowError(row_number, f"message {i} ({message['role']}): content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(row_number, "no assistant message to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def to_example(fmt: Any, row: dict[str, Any], row_number: int) -> Example:
    """One row as one training example in the shape TRL's SFTTrainer takes for the format."""
    if isinstance(fmt, TextFormat):
        value = row.get(fmt.field)
        if not isinstance(value, str) or not value:
            raise RowError(row_number, f"column {fmt.field!r} must be non-empty text")
        return {"text": value}
    if isinstance(fmt, TemplateFormat):
        return {"text": render_template(fmt.template, row, row_number)}
    if isinstance(fmt, PromptCompletionFormat):
        completion = render_template(fmt.completion, row, row_number)
        if not completion:
            raise RowError(row_number, "the completion is empty: there is nothing to train on")
        return {"prompt": render_template(fmt.prompt, row, row_number), "completion": completion}
    if isinstance(fmt, ChatFormat):
        return {"messages": chat_messages(row, fmt.field, row_number)}
    raise TypeError(f"unsupported format {fmt!r}")


def build_examples(fmt: Any, rows: list[dict[str, Any]]) -> tuple[list[Example], list[RowError]]:
    """Every row rendered; rows that cannot be are returned as errors (never silently dropped)."""
    examples, errors = [], []
    for number, row in enumerate(rows, start=1):
        try:
            examples.append(to_example(fmt, row, number))
        except RowError as exc:
            errors.append(exc)
    return examples, errors


def eval_split_indices(n: int, fraction: float, seed: int) -> set[int]:
    """Which of n examples are held out for eval: seeded, at least one on each side (empty if fraction is 0)."""
    if fraction <= 0 or n < 2:
        return set()
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(n * fraction)), n - 1)
    return set(order[:n_eval])


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded train/eval split of the examples, order kept on both sides."""
    held_out = eval_split_indices(len(examples), fraction, seed)
    train = [e for i, e in enumerate(examples) if i not in held_out]
    return train, [examples[i] for i in sorted(held_out)]

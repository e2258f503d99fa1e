"""Rows to training examples in TRL's shapes ({text}, {prompt, completion}, {messages}), shared by API and worker.

The API's checks (POST /jobs/validate) and the worker's recipe both call these functions, so what a user is
shown before submitting is what the trainer is given.
"""

import random
import string
from typing import Any

from app.spec.conversations import CHAT_ROLES, Example, alpaca_example, chat_example, sharegpt_example
from app.spec.errors import RowError
from app.spec.formats import (
    AlpacaFormat,
    ChatFormat,
    PromptCompletionFormat,
    ShareGPTFormat,
    TemplateFormat,
    TextFormat,
)
from app.spec.preference import PreferenceFormat, UnpairedPreferenceFormat, preference_example, unpaired_example

__all__ = ["CHAT_ROLES", "Example", "RowError", "build_examples", "eval_split_indices", "split_eval", "to_example"]


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
        return chat_example(fmt, row, row_number)
    if isinstance(fmt, ShareGPTFormat):
        return sharegpt_example(fmt, row, row_number)
    if isinstance(fmt, AlpacaFormat):
        return alpaca_example(fmt, row, row_number)
    if isinstance(fmt, PreferenceFormat):
        return preference_example(fmt, row, row_number)
    if isinstance(fmt, UnpairedPreferenceFormat):
        return unpaired_example(fmt, row, row_number)
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

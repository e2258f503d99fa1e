"""Base model vs adapter on held-out data: eval loss and perplexity, and exact-match accuracy for label tasks.

Runs at the end of training (`training.evaluate_base`) on the job's eval split or validation dataset. The
base's numbers come from the same model with the adapter disabled, so nothing is loaded twice.
"""

import math
from pathlib import Path
from typing import Any

from app import examples as shared
from app.spec import JobSpec
from worker.generation import Sampling, generate, prompt_and_target
from worker.training import data

MAX_LABELS = 20  # more distinct targets than this is free text, not a label task
MAX_LABEL_CHARS = 64
MAX_ACCURACY_EXAMPLES = 200  # generation is the slow part; 200 examples give accuracy to about ±7%


def eval_rows(spec: JobSpec, dataset_path: Path | None, validation_path: Path | None) -> list[dict[str, Any]]:
    """The raw rows behind the eval set the recipe built (validation dataset, else the seeded held-out split)."""
    ref, path = (spec.validation_dataset, validation_path) if spec.validation_dataset else (spec.dataset, dataset_path)
    rows = data.read_rows(path) if isinstance(ref, str) and path else data.load_hub_rows(ref)  # type: ignore[arg-type]
    if spec.validation_dataset:
        return rows
    held_out = shared.eval_split_indices(len(rows), spec.training.eval_fraction, spec.training.seed)
    return [rows[i] for i in sorted(held_out)]


def _loss(trainer: Any) -> float | None:
    # evaluation_loop, not evaluate(): no log or callback, so the base's loss never lands on the eval curve.
    output = trainer.evaluation_loop(
        trainer.get_eval_dataloader(), description="base vs adapter", prediction_loss_only=True
    )
    loss = output.metrics.get("eval_loss")
    return float(loss) if loss is not None and math.isfinite(loss) else None


def _side(loss: float | None, accuracy: float | None) -> dict[str, float | None]:
    perplexity = math.exp(min(loss, 50)) if loss is not None else None
    return {"eval_loss": loss, "perplexity": perplexity, "accuracy": accuracy}


def label_pairs(spec: JobSpec, tokenizer: Any, rows: list[dict[str, Any]]) -> list[tuple[str, str]] | None:
    """(prompt, label) per row when the task is text -> one of a few short labels; else None."""
    pairs = []
    for row in rows[:MAX_ACCURACY_EXAMPLES]:
        try:
            pair = prompt_and_target(spec, tokenizer, row)
        except shared.RowError:
            continue
        if pair is None:
            return None
        pairs.append(pair)
    labels = {target.strip() for _, target in pairs}
    if not pairs or len(labels) > MAX_LABELS or any(len(label) > MAX_LABEL_CHARS or not label for label in labels):
        return None
    if len(pairs) >= 4 and len(labels) > len(pairs) / 2:  # most targets unique: free text, not labels
        return None
    return pairs


def exact_match(generated: str, label: str) -> bool:
    """The first line of the continuation, trimmed, equals the label."""
    lines = generated.strip().splitlines()
    return bool(lines) and lines[0].strip() == label.strip()


def accuracy(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], chat: bool) -> float:
    longest = max(len(tokenizer(target, add_special_tokens=False)["input_ids"]) for _, target in pairs)
    outputs = generate(model, tokenizer, [p for p, _ in pairs], Sampling(max_new_tokens=longest + 2), chat)
    return sum(exact_match(out, target) for out, (_, target) in zip(outputs, pairs, strict=True)) / len(pairs)


def compare(
    trainer: Any, model: Any, tokenizer: Any, spec: JobSpec, rows: list[dict[str, Any]], adapter_loss: float | None
) -> dict[str, Any]:
    """{examples, base: {eval_loss, perplexity, accuracy}, adapter: {...}, label_examples} for the stored job."""
    pairs = label_pairs(spec, tokenizer, rows)
    chat = spec.format.type == "chat"
    adapter_accuracy = accuracy(model, tokenizer, pairs, chat) if pairs else None
    with model.disable_adapter():
        base_loss = _loss(trainer)
        base_accuracy = accuracy(model, tokenizer, pairs, chat) if pairs else None
    if adapter_loss is None:
        adapter_loss = _loss(trainer)
    return {
        "examples": len(rows),
        "label_examples": len(pairs) if pairs else 0,
        "base": _side(base_loss, base_accuracy),
        "adapter": _side(adapter_loss, adapter_accuracy),
    }

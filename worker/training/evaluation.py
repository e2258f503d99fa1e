"""Base model vs adapter on held-out data: eval loss and perplexity, and exact-match accuracy for label tasks.

Runs at the end of training (`training.evaluate_base`) on the job's eval split or validation dataset, and on
demand (POST /jobs/{id}/evaluations: `evaluate_adapter`) on those or another dataset. The base's numbers come
from the same model with the adapter disabled, so nothing is loaded twice.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer

from app.spec import examples as shared
from app.spec.formats import CONVERSATIONAL
from app.spec.job import JobSpec
from worker.training import data
from worker.training import model as modelling
from worker.training.generation import Sampling, generate, load_for_inference, prompt_and_target

MAX_LABELS = 20  # more distinct targets than this is free text, not a label task
MAX_LABEL_CHARS = 64
MAX_ACCURACY_EXAMPLES = 200  # generation is the slow part; 200 examples give accuracy to about ±7%


def eval_rows(spec: JobSpec, dataset_path: Path | None, validation_path: Path | None) -> list[dict[str, Any]]:
    """The raw rows behind the eval set the recipe built (validation dataset, else the seeded held-out split)."""
    ref, path = (spec.validation_dataset, validation_path) if spec.validation_dataset else (spec.dataset, dataset_path)
    rows = data.load_rows(ref, path)
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


@dataclass
class EvaluationOptions:
    """What an evaluation measures; the defaults are what `training.evaluate_base` runs at the end of training."""

    max_examples: int = MAX_ACCURACY_EXAMPLES  # rows generated from for exact match (loss uses every row given)
    include_base: bool = True  # False: the adapter's numbers only, half the time
    max_new_tokens: int | None = None  # per generated label; None: the longest label's tokens + 2


def label_pairs(
    spec: JobSpec, tokenizer: Any, rows: list[dict[str, Any]], limit: int = MAX_ACCURACY_EXAMPLES
) -> list[tuple[str, str]] | None:
    """(prompt, label) per row when the task is text -> one of a few short labels; else None."""
    pairs = []
    for row in rows[:limit]:
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


def accuracy(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], chat: bool, max_new_tokens: int | None = None
) -> float:
    """Share of greedy generations that exactly match their label (see exact_match)."""
    if max_new_tokens is None:
        max_new_tokens = 2 + max(len(tokenizer(target, add_special_tokens=False)["input_ids"]) for _, target in pairs)
    outputs = generate(model, tokenizer, [p for p, _ in pairs], Sampling(max_new_tokens=max_new_tokens), chat)
    return sum(exact_match(out, target) for out, (_, target) in zip(outputs, pairs, strict=True)) / len(pairs)


def compare(
    trainer: Any,
    model: Any,
    tokenizer: Any,
    spec: JobSpec,
    rows: list[dict[str, Any]],
    adapter_loss: float | None,
    options: EvaluationOptions | None = None,
) -> dict[str, Any]:
    """{examples, base: {eval_loss, perplexity, accuracy}, adapter: {...}, label_examples} for the stored job.

    `trainer` evaluates the loss on its eval dataset (the examples built from `rows`); `base` is None when
    options.include_base is off.
    """
    options = options or EvaluationOptions()
    pairs = label_pairs(spec, tokenizer, rows, options.max_examples)
    chat = isinstance(spec.format, CONVERSATIONAL)

    def measure() -> tuple[float | None, float | None]:
        correct = accuracy(model, tokenizer, pairs, chat, options.max_new_tokens) if pairs else None
        return _loss(trainer), correct

    if adapter_loss is None:
        adapter_loss, adapter_accuracy = measure()
    else:
        adapter_accuracy = accuracy(model, tokenizer, pairs, chat, options.max_new_tokens) if pairs else None
    base = None
    if options.include_base:
        with model.disable_adapter():
            base = _side(*measure())
    return {
        "examples": len(rows),
        "label_examples": len(pairs) if pairs else 0,
        "base": base,
        "adapter": _side(adapter_loss, adapter_accuracy),
    }


def _eval_trainer(spec: JobSpec, model: Any, tokenizer: Any, rows: list[dict[str, Any]], out_dir: Path) -> Any:
    """An SFTTrainer that only evaluates: the training recipe's loss (completion or assistant tokens only)."""
    on_gpu = modelling.device_type() == "cuda"
    args = SFTConfig(
        output_dir=str(out_dir),
        per_device_eval_batch_size=spec.training.batch_size,
        bf16=on_gpu and modelling.compute_dtype() is torch.bfloat16,
        fp16=on_gpu and modelling.compute_dtype() is torch.float16,
        use_cpu=not on_gpu,
        report_to=[],
        disable_tqdm=True,
        max_length=spec.training.max_seq_length,
        truncation_mode="keep_end" if spec.training.truncation_side == "left" else "keep_start",
        completion_only_loss=True,
        assistant_only_loss=False,  # the masks are in the labels (data.tokenized)
        gradient_checkpointing=False,  # TRL's default; it would switch the loaded model into training mode
        dataloader_num_workers=0,
    )
    eval_set = data.tokenized(spec, tokenizer, data.build_examples(spec, rows))
    # SFTTrainer insists on a train_dataset; it is never trained on here.
    return SFTTrainer(model=model, args=args, train_dataset=eval_set, eval_dataset=eval_set, processing_class=tokenizer)


def evaluate_adapter(
    spec: JobSpec, adapter_dir: Path, rows: list[dict[str, Any]], out_dir: Path, options: EvaluationOptions
) -> dict[str, Any]:
    """On-demand evaluation of a trained adapter on `rows` (the first options.max_examples): compare()'s record."""
    rows = rows[: options.max_examples]
    model, tokenizer = load_for_inference(spec, adapter_dir)
    trainer = _eval_trainer(spec, model, tokenizer, rows, out_dir)
    return compare(trainer, model, tokenizer, spec, rows, None, options)

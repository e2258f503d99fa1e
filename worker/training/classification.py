"""The classification recipe, top to bottom: labelled rows, a base with a head and an adapter, train, save.

`recipe.run` hands `task: classification` jobs here. Same Report, progress, cancellation, checkpoints and resume
as the causal-LM recipe (causal_lm.py); the loss is cross-entropy over the labels, and every evaluation (including
one of the untrained head before step 1) reports accuracy, macro F1, per-class precision/recall and the confusion
matrix.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

from app.core.config import settings
from app.spec import labels as rows_of
from app.spec.examples import eval_split_indices
from app.spec.job import JobSpec
from worker.training import adapters, classifier, data, speed
from worker.training import model as modelling
from worker.training.best import BestAdapter
from worker.training.checkpoints import CheckpointCallback, InjectedOutOfMemory
from worker.training.classification_metrics import ClassificationReport, EvalMetrics
from worker.training.errors import Cancelled, Drained, TrainingError
from worker.training.loop import loop_arguments
from worker.training.progress import LogReport, ProgressCallback, Report
from worker.training.result import TrainingResult, write_training_spec

Labelled = list[tuple[str, int]]


@dataclass
class ClassificationResult(TrainingResult):
    labels: list[str] = field(default_factory=list)
    accuracy: float | None = None  # of the saved adapter, on the eval split or validation dataset
    f1: float | None = None  # macro F1, same data
    baseline_accuracy: float | None = None  # the untrained head, before step 1


def _labelled(spec: JobSpec, rows: list[dict[str, Any]], labels: list[str], which: str) -> Labelled:
    examples, errors = rows_of.labelled_rows(spec.format, rows, labels)
    if errors:
        more = f" (and {len(errors) - 1} more rows)" if len(errors) > 1 else ""
        raise TrainingError("dataset_error", f"{which}: {errors[0]}{more}")
    return examples


def _setup_data(
    spec: JobSpec, dataset_path: Path | None, validation_path: Path | None
) -> tuple[list[str], Labelled, Labelled]:
    """The label names and the (text, label id) rows to train and evaluate on."""
    rows = data.load_rows(spec.dataset, dataset_path)
    if not rows:
        raise TrainingError("dataset_error", "the dataset has no rows")
    labels = rows_of.label_names(spec.format, rows)
    if len(labels) < 2:
        raise TrainingError("dataset_error", f"a classifier needs at least 2 different labels; found {labels}")
    examples = _labelled(spec, rows, labels, "dataset")
    if spec.validation_dataset is not None:
        val_rows = data.load_rows(spec.validation_dataset, validation_path)
        return labels, examples, _labelled(spec, val_rows, labels, "validation_dataset")
    held_out = eval_split_indices(len(examples), spec.training.eval_fraction, spec.training.seed)
    train = [e for i, e in enumerate(examples) if i not in held_out]
    return labels, train, [examples[i] for i in sorted(held_out)]


def _tokenized(tokenizer: Any, rows: Labelled, max_length: int) -> Dataset:
    encoded = tokenizer([text for text, _ in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": [label for _, label in rows]})


def _training_args(spec: JobSpec, out_dir: Path, has_eval: bool, fast: speed.SpeedPlan) -> TrainingArguments:
    return TrainingArguments(
        **loop_arguments(spec, out_dir, has_eval, fast),
        remove_unused_columns=False,  # the dataset holds exactly the model's inputs and labels
        label_names=["labels"],
    )


def _before_and_after(
    baseline: dict[str, Any] | None, final: dict[str, Any] | None, examples: int
) -> dict[str, Any] | None:
    """The job's base-vs-adapter record (as training/evaluation.py keeps it): untrained head vs trained adapter."""
    if baseline is None or final is None:
        return None

    def side(m: dict[str, Any]) -> dict[str, Any]:
        return {"eval_loss": m.get("eval_loss"), "perplexity": None, "accuracy": m.get("accuracy"), "f1": m.get("f1")}

    return {"examples": examples, "label_examples": examples, "base": side(baseline), "adapter": side(final)}


def _final_eval(
    trainer: Trainer, progress: ProgressCallback, metrics: EvalMetrics, best: BestAdapter | None
) -> dict[str, Any] | None:
    """The saved adapter's metrics: the last step's (evaluated now unless training just ended with an evaluation),
    or with load_best the best evaluation's, whose weights are put back."""
    last = progress.last_eval
    if last is None or last["step"] != trainer.state.global_step or metrics.last is None:
        trainer.evaluate()  # also a candidate for load_best
        last = progress.last_eval
    if best is not None and (best_metrics := best.restore()) is not None:
        return best_metrics
    return {**(metrics.last or {}), "eval_loss": (last or {}).get("eval_loss")}


def run(
    spec: JobSpec,
    dataset_path: Path | None,
    out_dir: Path,
    report: Report | None = None,
    validation_path: Path | None = None,
    resume_from: Path | None = None,
) -> ClassificationResult:
    """Train a classifier for `spec.base_model` on the labelled rows; save the adapter and labels.json."""
    started = time.monotonic()
    torch.manual_seed(spec.training.seed)
    labels, train_rows, eval_rows = _setup_data(spec, dataset_path, validation_path)
    tokenizer = modelling.load_tokenizer(spec.base_model)
    tokenizer.truncation_side = spec.training.truncation_side
    spec, warnings = adapters.fit_training(spec)
    fast = speed.plan(spec.training, modelling.device_type(), causal_lm=False)
    metrics = EvalMetrics(labels)
    report = ClassificationReport(report or LogReport(), metrics)
    for message in [*warnings, *fast.warnings]:
        report.warning(message)
    model = classifier.load_classifier(spec, labels, tokenizer, fast.attn_implementation)
    peft_model = classifier.add_adapter(model, spec)
    speed.use_cpu_kernels(peft_model, fast)
    speed.keep_adapter_fp32(peft_model)  # LoRA and the head in fp32 (a bf16 base trains under autocast on a GPU)
    trainable, total = modelling.count_parameters(peft_model)
    report.parameters(trainable, total)

    max_length = spec.training.max_seq_length
    eval_set = _tokenized(tokenizer, eval_rows, max_length) if eval_rows else None
    progress = ProgressCallback(report)
    trainer = Trainer(
        model=peft_model,
        args=_training_args(spec, out_dir, eval_set is not None, fast),
        train_dataset=_tokenized(tokenizer, train_rows, max_length),
        eval_dataset=eval_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=metrics,
        callbacks=[progress],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CheckpointCallback(report, {classifier.LABELS_FILE: classifier.labels_json(labels, spec)}))
    if settings.fault_oom_above_batch_size is not None:
        trainer.add_callback(InjectedOutOfMemory(settings.fault_oom_above_batch_size))
    baseline: dict[str, Any] | None = None
    if eval_set is not None and resume_from is None:
        # Step 0, the untrained head: the accuracy curve starts where training does (an eval pass before
        # training, which 4-bit layers survive on the CPU thanks to keep_4bit_layers_trainable_on_cpu).
        loss = trainer.evaluate().get("eval_loss")
        baseline = {**(metrics.last or {}), "eval_loss": loss}
    best = None
    if spec.training.load_best:
        best = BestAdapter(peft_model, spec.training.metric_for_best, lambda: metrics.last)
        trainer.add_callback(best)
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if progress.stopped:
        raise Cancelled()
    if progress.drained and trainer.state.global_step < trainer.state.max_steps:
        raise Drained(trainer.state.global_step)

    final = _final_eval(trainer, progress, metrics, best) if eval_set is not None else None
    adapter_dir = classifier.save_classifier(peft_model, tokenizer, labels, spec, out_dir / "adapter")
    result = ClassificationResult(
        adapter_dir=str(adapter_dir),
        steps=trainer.state.global_step,
        train_loss=output.training_loss if math.isfinite(output.training_loss) else None,
        eval_loss=(final or {}).get("eval_loss"),
        trainable_parameters=trainable,
        total_parameters=total,
        runtime_seconds=round(time.monotonic() - started, 2),
        device=modelling.device_type(),
        best_step=best.step if best is not None else None,
        labels=labels,
        accuracy=(final or {}).get("accuracy"),
        f1=(final or {}).get("f1"),
        baseline_accuracy=(baseline or {}).get("accuracy"),
        evaluation=_before_and_after(baseline, final, len(eval_rows)),
    )
    write_training_spec(adapter_dir, spec)
    summary = {**asdict(result), "eval": final}
    (adapter_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return result

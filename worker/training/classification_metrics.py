"""Classification eval: accuracy, macro F1, per-class precision/recall and the confusion matrix, as eval points.

The Trainer logs the scalars (`accuracy`, `f1`) next to `eval_loss`; the breakdown of the same evaluation is added
to the eval point the job reports (stored in the metric point's `extra`, served by GET /jobs/{id}/metrics).
"""

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import EvalPrediction, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.training.progress import Report

DROPPED_KEYS = ("model_preparation_time",)  # Trainer bookkeeping, not a metric


def classification_metrics(predicted: np.ndarray, actual: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1 (over the classes that occur or are predicted), per class and the confusion matrix.

    `confusion_matrix[i][j]` counts texts of label i predicted as label j, in the order of `labels`.
    """
    n = len(labels)
    matrix = np.bincount(actual * n + predicted, minlength=n * n).reshape(n, n)
    hits, support, guessed = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(hits, guessed, out=np.zeros(n), where=guessed > 0)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(n), where=both > 0)
    seen = (support + guessed) > 0
    return {
        "accuracy": float(hits.sum() / max(matrix.sum(), 1)),
        "f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 6),
                "recall": round(float(recall[i]), 6),
                "f1": round(float(f1[i]), 6),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": matrix.tolist(),
        "labels": labels,
    }


class EvalMetrics:
    """The Trainer's `compute_metrics`: returns the scalars it logs and keeps the last full breakdown."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.last: dict[str, Any] | None = None

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, tuple):  # some heads return extra outputs after the logits
            logits = logits[0]
        self.last = classification_metrics(np.asarray(logits).argmax(-1), np.asarray(prediction.label_ids), self.labels)
        return {"accuracy": self.last["accuracy"], "f1": self.last["f1"]}


class ClassificationReport:
    """The job's Report, whose eval points also carry the breakdown of the evaluation they report."""

    def __init__(self, inner: Report, metrics: EvalMetrics):
        self.inner = inner
        self.metrics = metrics

    def eval_point(self, point: dict[str, Any]) -> None:
        details = self.metrics.last or {}
        extra = {k: details[k] for k in ("per_class", "confusion_matrix", "labels") if k in details}
        self.inner.eval_point({**{k: v for k, v in point.items() if k not in DROPPED_KEYS}, **extra})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # everything else is the job's own Report


class BestByMetric(TrainerCallback):
    """`training.load_best` by `training.metric_for_best`: the adapter (head included) of the best evaluation.

    Lowest eval_loss, or highest accuracy or f1. The weights are small, so they are kept in memory at each
    improvement; `restore()` puts them back. After a resume only evaluations since the resume are compared.
    """

    def __init__(self, model: PeftModel, metric: str, details: Callable[[], dict[str, Any] | None]):
        self.model = model
        self.metric = metric
        self.details = details
        self.score = -math.inf
        self.step: int | None = None
        self.metrics: dict[str, Any] | None = None
        self._weights: dict[str, Any] | None = None

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        value = (metrics or {}).get(f"eval_{self.metric.removeprefix('eval_')}")
        if value is None or not math.isfinite(value):
            return
        score = -value if self.metric == "eval_loss" else value
        if score <= self.score:
            return
        self.score, self.step = score, state.global_step
        self.metrics = {**(self.details() or {}), "eval_loss": (metrics or {}).get("eval_loss")}
        self._weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(self.model).items()}

    def restore(self) -> dict[str, Any] | None:
        """Load the best weights back (no-op before any evaluation); returns that evaluation's metrics."""
        if self._weights is None:
            return None
        set_peft_model_state_dict(self.model, self._weights)
        return self.metrics

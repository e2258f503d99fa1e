"""Classification eval: accuracy, macro F1, per-class precision/recall and the confusion matrix, as eval points.

The Trainer logs the scalars (`accuracy`, `f1`) next to `eval_loss`; the breakdown of the same evaluation is added
to the eval point the job reports (stored in the metric point's `extra`, served by GET /jobs/{id}/metrics).
"""

from typing import Any

import numpy as np
from transformers import EvalPrediction

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

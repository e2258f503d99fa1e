"""What a training run returns: `TrainingResult`, shared by both recipes and the multi-GPU launcher."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.egress import redact_url
from app.spec.job import JobSpec


@dataclass
class TrainingResult:
    adapter_dir: str
    steps: int
    train_loss: float | None
    eval_loss: float | None
    trainable_parameters: int
    total_parameters: int
    runtime_seconds: float
    device: str
    best_step: int | None = None  # with training.load_best: the step whose adapter was kept
    train_seconds: float | None = None  # the training loop alone, for tokens/s
    train_cpu_seconds: float | None = None  # CPU time of the loop (all threads): tokens/s that load barely moves
    train_tokens: int | None = None  # real (non-padding) tokens trained on
    peak_memory_bytes: int | None = None  # CUDA peak allocated on a GPU, peak RSS on the CPU
    evaluation: dict[str, Any] | None = None  # training.evaluate_base: base vs adapter (worker/training/evaluation.py)


def write_training_spec(adapter_dir: Path, spec: JobSpec) -> None:
    """The spec the adapter was trained with, saved beside it; a webhook URL (which may hold a token) redacted,
    since the adapter directory is what gets downloaded and published."""
    record = spec.model_dump(mode="json")
    if record.get("webhook_url"):
        record["webhook_url"] = redact_url(record["webhook_url"])
    (adapter_dir / "training_spec.json").write_text(json.dumps(record, indent=2))

"""What a training run returns: `TrainingResult`, shared by both recipes and the multi-GPU launcher."""

from dataclasses import dataclass
from typing import Any


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

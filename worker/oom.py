"""Out-of-memory policy: halve the micro-batch and double accumulation, so the effective batch stays."""

import math

from app.spec.job import Training


def is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def smaller_micro_batch(training: Training) -> Training | None:
    """The same training with half the micro-batch, or None when it is already 1."""
    if training.batch_size <= 1:
        return None
    batch = training.batch_size // 2
    effective = training.batch_size * training.gradient_accumulation_steps
    return training.model_copy(
        update={"batch_size": batch, "gradient_accumulation_steps": math.ceil(effective / batch)}
    )

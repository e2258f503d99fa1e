"""`training.load_best`: keep the adapter weights of the best evaluation, and end training with them.

Best by `training.metric_for_best`: the lowest eval loss, or (classification) the highest accuracy or f1. The
adapter is small (a classifier's head included), so the best weights are kept in memory at each improvement
rather than tied to the Trainer's checkpoint schedule (`load_best_model_at_end` would force saving at every
evaluation). After a resume from a checkpoint, only the evaluations since the resume are compared.
"""

import math
from collections.abc import Callable
from typing import Any

from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class BestAdapter(TrainerCallback):
    """Remembers the adapter weights of the best evaluation; `restore()` puts them back in the model.

    `details`, when given, adds to the remembered metrics what the evaluation computed besides the Trainer's
    logged scalars (the classification breakdown).
    """

    def __init__(
        self,
        model: PeftModel,
        metric: str = "eval_loss",
        details: Callable[[], dict[str, Any] | None] | None = None,
    ):
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
        extra = (self.details() or {}) if self.details is not None else {}
        self.metrics = {**extra, "eval_loss": (metrics or {}).get("eval_loss")}
        self._weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(self.model).items()}

    def restore(self) -> dict[str, Any] | None:
        """Load the best weights back (no-op before any evaluation); returns that evaluation's metrics."""
        if self._weights is None:
            return None
        set_peft_model_state_dict(self.model, self._weights)
        return self.metrics

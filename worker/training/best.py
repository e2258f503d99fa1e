"""`training.load_best`: keep the LoRA weights of the evaluation with the lowest eval loss, and end with them.

The adapter is small, so the best weights are kept in memory at each evaluation rather than tied to the
Trainer's checkpoint schedule (`load_best_model_at_end` would force saving at every evaluation). After a
resume from a checkpoint, only the evaluations since the resume are compared.
"""

import math
from typing import Any

from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class BestAdapter(TrainerCallback):
    """Remembers the adapter weights at the lowest eval loss; `restore()` puts them back in the model."""

    def __init__(self, model: PeftModel):
        self.model = model
        self.loss = math.inf
        self.step: int | None = None
        self._weights: dict[str, Any] | None = None

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not math.isfinite(loss) or loss >= self.loss:
            return
        self.loss, self.step = float(loss), state.global_step
        self._weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(self.model).items()}

    def restore(self) -> float | None:
        """Load the best weights back (no-op before any evaluation); returns their eval loss."""
        if self._weights is None:
            return None
        set_peft_model_state_dict(self.model, self._weights)
        return self.loss

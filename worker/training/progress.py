"""The recipe's only window to the outside: a Report, fed by a Trainer callback at each logged step."""

import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)


class Report(Protocol):
    def parameters(self, trainable: int, total: int) -> None: ...
    def train_point(self, point: dict[str, Any]) -> None: ...
    def eval_point(self, point: dict[str, Any]) -> None: ...
    def warning(self, message: str) -> None: ...
    def should_stop(self) -> bool: ...
    def should_drain(self) -> bool: ...
    def checkpoint(self, step: int, path: Path) -> None: ...


class LogReport:
    """A Report for notebooks and scripts: everything goes to the log, nothing stops training."""

    def parameters(self, trainable: int, total: int) -> None:
        log.info("trainable parameters %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    def train_point(self, point: dict[str, Any]) -> None:
        log.info(
            "step %s/%s loss %.4f eta %ss",
            point["step"],
            point["total_steps"],
            point.get("loss") or math.nan,
            point.get("eta_seconds"),
        )

    def eval_point(self, point: dict[str, Any]) -> None:
        log.info("step %s eval_loss %.4f", point["step"], point.get("eval_loss") or math.nan)

    def warning(self, message: str) -> None:
        log.warning(message)

    def should_stop(self) -> bool:
        return False

    def should_drain(self) -> bool:
        return False

    def checkpoint(self, step: int, path: Path) -> None:
        log.info("checkpoint at step %s: %s", step, path)


# What preference trainers log beside the loss: rewards/chosen, rewards/rejected, rewards/margins,
# rewards/accuracies, logps/chosen, logps/rejected, logits/..., kl (KTO).
PREFERENCE_METRICS = ("rewards/", "logps/", "logits/", "kl")


def _peak_gpu_memory() -> dict[str, float]:
    """`peak_memory_mb` (the most GPU memory tensors have held so far) on a GPU; nothing on the CPU."""
    if not torch.cuda.is_available():
        return {}
    return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class ProgressCallback(TrainerCallback):
    """Turns the Trainer's logs into train and eval points with tokens/s and an ETA; honours cancellation."""

    def __init__(self, report: Report):
        self.report = report
        self.started = time.monotonic()
        self.last_time = self.started
        self.last_tokens = 0
        self.stopped = False
        self.drained = False
        self.last_eval: dict[str, Any] | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self.started = self.last_time = time.monotonic()
        self.last_tokens = state.num_input_tokens_seen or 0

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if self.report.should_stop():
            self.stopped = True
            control.should_training_stop = True
        elif self.report.should_drain():
            # A graceful shutdown: save a checkpoint at this step, then stop; the job resumes elsewhere.
            self.drained = True
            control.should_save = True
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        logs = logs or {}
        now = time.monotonic()
        if "eval_loss" in logs:
            point = {
                k.removeprefix("eval_"): _finite(v)
                for k, v in logs.items()
                if k.startswith("eval_") and isinstance(v, int | float)
            }
            (
                point.pop("runtime", None),
                point.pop("samples_per_second", None),
                point.pop("steps_per_second", None),
            )
            self.last_eval = {
                **point,
                "step": state.global_step,
                "epoch": _finite(state.epoch),
                "eval_loss": _finite(logs["eval_loss"]),
            }
            self.report.eval_point(self.last_eval)
            return
        if "loss" not in logs:
            return  # the end-of-training summary
        tokens = state.num_input_tokens_seen or 0
        elapsed = now - self.last_time
        done = state.global_step
        eta = (now - self.started) / done * (state.max_steps - done) if done else None
        self.report.train_point(
            {
                "step": done,
                "total_steps": state.max_steps,
                "epoch": _finite(state.epoch),
                "loss": _finite(logs.get("loss")),
                "learning_rate": _finite(logs.get("learning_rate")),
                "grad_norm": _finite(logs.get("grad_norm")),
                "tokens_per_second": (tokens - self.last_tokens) / elapsed if elapsed > 0 and tokens else None,
                "num_tokens": tokens or None,
                "eta_seconds": round(eta, 1) if eta is not None else None,
                "mean_token_accuracy": _finite(logs.get("mean_token_accuracy")),
                **{k: _finite(v) for k, v in logs.items() if k.startswith(PREFERENCE_METRICS)},
                **_peak_gpu_memory(),
            }
        )
        self.last_time, self.last_tokens = now, tokens

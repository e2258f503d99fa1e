"""Checkpoints a job can resume from: marked complete only after the Trainer has finished writing them."""

import re
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.training.progress import Report

COMPLETE_MARKER = ".complete"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def latest_complete_checkpoint(trainer_dir: Path) -> tuple[int, Path] | None:
    """The newest checkpoint-N under trainer_dir that was fully written (a half-written one is ignored)."""
    found = []
    for path in trainer_dir.glob("checkpoint-*"):
        match = CHECKPOINT_DIR.match(path.name)
        if match and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return max(found) if found else None


class CheckpointCallback(TrainerCallback):
    """After the Trainer has saved a checkpoint, add `extra_files` (name -> text, e.g. a classifier's labels.json),
    report it, then mark it complete.

    Reported (packed, recorded) before it is marked: a later attempt resumes only from a checkpoint the job lists.
    A worker killed in between resumes from the checkpoint before and saves this one again."""

    def __init__(self, report: Report, extra_files: dict[str, str] | None = None):
        self.report = report
        self.extra_files = extra_files or {}

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        # The Trainer also saves at the last step; the adapter is saved then anyway, so skip the optimizer dump.
        if state.global_step >= state.max_steps and state.global_step % args.save_steps:
            control.should_save = False

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not path.is_dir():
            return  # a multi-process job's ranks share one checkpoint: rank 0 reports and marks it
        for name, text in self.extra_files.items():
            (path / name).write_text(text)
        self.report.checkpoint(state.global_step, path)
        (path / COMPLETE_MARKER).touch()


class InjectedOutOfMemory(TrainerCallback):
    """Fault injection for tests (FT_FAULT_OOM_ABOVE_BATCH_SIZE): a CUDA-style OOM on an over-large micro-batch."""

    def __init__(self, max_batch_size: int):
        self.max_batch_size = max_batch_size

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if args.per_device_train_batch_size > self.max_batch_size:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: micro-batch {args.per_device_train_batch_size} > {self.max_batch_size})"
            )

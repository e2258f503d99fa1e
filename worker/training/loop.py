"""The training-loop arguments every recipe shares (the causal SFT recipe and the classifier's)."""

from pathlib import Path
from typing import Any

import torch

from app.spec.job import JobSpec
from worker.training import model as modelling
from worker.training import speed


def loop_arguments(spec: JobSpec, out_dir: Path, has_eval: bool, fast: speed.SpeedPlan) -> dict[str, Any]:
    """Batch, schedule, optimizer, seed, precision, logging, evaluation and checkpointing, as keyword arguments
    for `TrainingArguments` or TRL's `SFTConfig`."""
    t = spec.training
    on_gpu = modelling.device_type() == "cuda"
    eval_strategy = ("steps" if t.eval_every_steps else "epoch") if has_eval else "no"
    return {
        "output_dir": str(out_dir / "trainer"),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "optim": t.optimizer,
        "seed": t.seed,
        "data_seed": t.seed,
        # Non-reentrant checkpointing: the reentrant kind gives frozen-input LoRA no gradients or runs slower.
        "gradient_checkpointing": t.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "bf16": on_gpu and modelling.compute_dtype() is torch.bfloat16,
        "fp16": on_gpu and modelling.compute_dtype() is torch.float16,
        "use_cpu": not on_gpu,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "eval_strategy": eval_strategy,
        "eval_steps": t.eval_every_steps,
        # Checkpoints make a killed or preempted job resumable; two are kept for resuming, older ones
        # stay downloadable as packed adapters (see worker/training/checkpoints.py).
        "save_strategy": "steps" if t.checkpoint_every_steps else "no",
        "save_steps": t.checkpoint_every_steps or 500,
        "save_total_limit": 2,
        "report_to": [],
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,  # multi-process jobs: LoRA leaves no parameter unused
        **speed.sampler_args(fast.group_by_length),
    }

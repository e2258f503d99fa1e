"""The causal-LM recipe, top to bottom: examples, a base with an adapter, train with TRL's SFTTrainer, save.

`recipe.run` hands `task: causal_lm` jobs here (classification.py has the classifier recipe). The loss covers the
completion (or the assistant's turns) only; the saved adapter directory also holds training_spec.json and
metrics.json. No Celery, Redis or SQL here: progress, cancellation and checkpoints go through the Report.
"""

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from app.core.config import settings
from app.spec.job import JobSpec
from worker.training import adapters, data, evaluation, speed
from worker.training import model as modelling
from worker.training.best import BestAdapter
from worker.training.checkpoints import CheckpointCallback, InjectedOutOfMemory
from worker.training.errors import Cancelled, Drained
from worker.training.loop import loop_arguments
from worker.training.progress import LogReport, ProgressCallback, Report
from worker.training.result import TrainingResult, write_training_spec
from worker.training.speed import SpeedPlan


def _setup_data(
    spec: JobSpec, tokenizer: Any, dataset_path: Path | None, validation_path: Path | None
) -> tuple[Dataset, Dataset | None]:
    """The train and eval sets, tokenized with their loss masks (data.tokenized)."""
    train, evals = data.train_and_eval_examples(spec, dataset_path, validation_path)
    return data.tokenized(spec, tokenizer, train), (data.tokenized(spec, tokenizer, evals) if evals else None)


def _training_args(spec: JobSpec, out_dir: Path, has_eval: bool, fast: SpeedPlan | None = None) -> SFTConfig:
    t = spec.training
    fast = fast or SpeedPlan(padding_free=False)
    return SFTConfig(
        **loop_arguments(spec, out_dir, has_eval, fast),
        max_length=t.max_seq_length,
        # TRL cuts by this, not by tokenizer.truncation_side: "left" keeps an example's end.
        truncation_mode="keep_end" if t.truncation_side == "left" else "keep_start",
        packing=t.packing,
        # The loss masks are already in the examples' labels (data.tokenized).
        completion_only_loss=True,
        assistant_only_loss=False,
        dataset_num_proc=None,
        use_liger_kernel=fast.use_liger_kernel,
        torch_compile=fast.torch_compile,
    )


def run(
    spec: JobSpec,
    dataset_path: Path | None,
    out_dir: Path,
    report: Report | None = None,
    validation_path: Path | None = None,
    resume_from: Path | None = None,
    init_adapter: Path | None = None,
) -> TrainingResult:
    """Fine-tune `spec.base_model` on the dataset's examples and save the adapter under out_dir/adapter
    (a fresh adapter, or `init_adapter`'s trained on further)."""
    report = report or LogReport()
    started = time.monotonic()
    torch.manual_seed(spec.training.seed)

    # Tokenizer and data
    tokenizer = modelling.load_tokenizer(spec.base_model)
    tokenizer.truncation_side = spec.training.truncation_side
    data.use_chat_template(spec, tokenizer)
    train_set, eval_set = _setup_data(spec, tokenizer, dataset_path, validation_path)

    # The model: the base with its adapter
    spec, adapter_warnings = adapters.fit_training(spec)  # what the adapter method cannot train with, turned off
    for message in adapter_warnings:
        report.warning(message)
    fast = speed.plan(spec.training, modelling.device_type())
    for message in fast.warnings:
        report.warning(message)
    base = modelling.load_model(spec, fast.attn_implementation)
    peft_model = adapters.add_adapter(base, spec, init_adapter)
    speed.use_cpu_kernels(peft_model, fast)
    trainable, total = modelling.count_parameters(peft_model)
    report.parameters(trainable, total)

    # Train
    progress = ProgressCallback(report)
    trainer = SFTTrainer(
        model=peft_model,
        args=_training_args(spec, out_dir, eval_set is not None, fast),
        # Padding-free through our own collator: SFTConfig(padding_free=True) without packing refuses a
        # max_length, and this way examples are still cut to max_seq_length.
        data_collator=speed.padding_free_collator(tokenizer.pad_token_id) if fast.padding_free else None,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[progress],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through the report, not stdout dicts
    if fast.fp32_adapter:
        speed.keep_adapter_fp32(peft_model)
    trainer.add_callback(CheckpointCallback(report))
    best = BestAdapter(peft_model) if spec.training.load_best else None  # by eval loss
    if best is not None:
        trainer.add_callback(best)
    if settings.fault_oom_above_batch_size is not None:
        trainer.add_callback(InjectedOutOfMemory(settings.fault_oom_above_batch_size))
    cpu_started = time.process_time()
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_cpu_seconds = time.process_time() - cpu_started
    if progress.stopped:
        raise Cancelled()
    if progress.drained and trainer.state.global_step < trainer.state.max_steps:
        raise Drained(trainer.state.global_step)

    # Evaluate the adapter to be saved (and, with training.evaluate_base, the base beside it)
    eval_loss = None
    if eval_set is not None:
        if progress.last_eval is not None and progress.last_eval["step"] == trainer.state.global_step:
            eval_loss = progress.last_eval["eval_loss"]
        else:
            eval_loss = trainer.evaluate().get("eval_loss")
    if best is not None and (best_metrics := best.restore()) is not None:
        eval_loss = float(best_metrics["eval_loss"])  # the adapter saved below is the one with the lowest eval loss
    comparison = None
    if spec.training.evaluate_base and eval_set is not None:
        rows = evaluation.eval_rows(spec, dataset_path, validation_path)
        comparison = evaluation.compare(trainer, peft_model, tokenizer, spec, rows, eval_loss)

    # Save
    if not trainer.is_world_process_zero():  # a multi-process job: rank 0 saves the one adapter
        return _result(out_dir / "adapter", trainer, output, trainable, total, started, eval_loss)
    adapter_dir = modelling.save_adapter(peft_model, tokenizer, out_dir / "adapter")
    train_loss = output.training_loss if math.isfinite(output.training_loss) else None
    result = TrainingResult(
        adapter_dir=str(adapter_dir),
        steps=trainer.state.global_step,
        train_loss=train_loss,
        eval_loss=eval_loss,
        trainable_parameters=trainable,
        total_parameters=total,
        runtime_seconds=round(time.monotonic() - started, 2),
        device=modelling.device_type(),
        best_step=best.step if best is not None else None,
        train_seconds=output.metrics.get("train_runtime"),
        train_cpu_seconds=round(train_cpu_seconds, 2),
        train_tokens=trainer.state.num_input_tokens_seen or None,
        peak_memory_bytes=speed.peak_memory_bytes(),
        evaluation=comparison,
    )
    write_training_spec(adapter_dir, spec)
    (adapter_dir / "metrics.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _result(
    adapter_dir: Path, trainer: SFTTrainer, output: Any, trainable: int, total: int, started: float, eval_loss: Any
) -> TrainingResult:
    """What a rank other than 0 returns: the same loop, nothing saved (its result is not recorded)."""
    return TrainingResult(
        adapter_dir=str(adapter_dir),
        steps=trainer.state.global_step,
        train_loss=output.training_loss,
        eval_loss=eval_loss,
        trainable_parameters=trainable,
        total_parameters=total,
        runtime_seconds=round(time.monotonic() - started, 2),
        device=modelling.device_type(),
    )

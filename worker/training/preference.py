"""The preference recipe, top to bottom: pairs (or labelled answers), the base with an adapter, TRL's trainer, save.

`recipe.run` hands `method: dpo | kto | orpo | simpo` jobs here. The adapter is a fresh one, or the one of the job
named in `init_from` (SFT then DPO). DPO and KTO need a reference model: it is the starting point with the trained
adapter switched off, never a second copy of the base. From a fresh adapter that is the base itself; from an
earlier job's adapter TRL keeps a frozen copy of that adapter (a few MB) as the reference. ORPO and SimPO have none.
"""

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PrinterCallback

from app.spec.job import JobSpec
from worker.training import adapters, data, speed
from worker.training import model as modelling
from worker.training.checkpoints import CheckpointCallback
from worker.training.errors import Cancelled, Drained
from worker.training.loop import loop_arguments
from worker.training.progress import LogReport, ProgressCallback, Report
from worker.training.result import TrainingResult, write_training_spec


def _setup_data(
    spec: JobSpec, dataset_path: Path | None, validation_path: Path | None
) -> tuple[Dataset, Dataset | None]:
    train, evals = data.train_and_eval_examples(spec, dataset_path, validation_path)
    return Dataset.from_list(train), (Dataset.from_list(evals) if evals else None)


def _trainer_classes(spec: JobSpec) -> tuple[Any, Any, dict[str, Any]]:
    """(Trainer, Config, the method's settings) in TRL's names."""
    m = spec.method
    if m.type == "dpo":
        from trl import DPOConfig, DPOTrainer

        if m.rpo_alpha:  # RPO: the preference loss plus an SFT loss on the chosen answers, weighted
            return (
                DPOTrainer,
                DPOConfig,
                {"beta": m.beta, "loss_type": [m.loss_type, "sft"], "loss_weights": [1.0, m.rpo_alpha]},
            )
        return DPOTrainer, DPOConfig, {"beta": m.beta, "loss_type": [m.loss_type]}
    if m.type == "kto":
        from trl import KTOConfig, KTOTrainer

        weights = {"desirable_weight": m.desirable_weight, "undesirable_weight": m.undesirable_weight}
        return KTOTrainer, KTOConfig, {"beta": m.beta, **weights}
    if m.type == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig, {"beta": m.beta}
    from trl.experimental.cpo import CPOConfig, CPOTrainer  # SimPO is CPO's `simpo` loss without the SFT term

    return CPOTrainer, CPOConfig, {"beta": m.beta, "simpo_gamma": m.gamma, "loss_type": "simpo", "cpo_alpha": 0.0}


def _model(spec: JobSpec, init_adapter: Path | None, fast: speed.SpeedPlan) -> PeftModel:
    base = modelling.load_model(spec, fast.attn_implementation)
    return adapters.add_adapter(base, spec, init_adapter)


def run(
    spec: JobSpec,
    dataset_path: Path | None,
    out_dir: Path,
    report: Report | None = None,
    validation_path: Path | None = None,
    resume_from: Path | None = None,
    init_adapter: Path | None = None,
) -> TrainingResult:
    """Preference-tune `spec.base_model` (from `init_adapter` when given) and save the adapter under out_dir/adapter."""
    report = report or LogReport()
    started = time.monotonic()
    torch.manual_seed(spec.training.seed)

    # Tokenizer and data
    tokenizer = modelling.load_tokenizer(spec.base_model)
    data.use_chat_template(spec, tokenizer)
    train_set, eval_set = _setup_data(spec, dataset_path, validation_path)

    # The model: the base with its adapter (the reference is the same model with the adapter off)
    spec, adapter_warnings = adapters.fit_training(spec)
    for message in adapter_warnings:
        report.warning(message)
    fast = speed.plan(spec.training, modelling.device_type())
    peft_model = _model(spec, init_adapter, fast)
    speed.use_cpu_kernels(peft_model, fast)  # the lean LM head serves the preference trainers' fused log-probs too
    trainable, total = modelling.count_parameters(peft_model)
    report.parameters(trainable, total)

    # Train
    trainer_class, config_class, settings = _trainer_classes(spec)
    loop = loop_arguments(spec, out_dir, eval_set is not None, fast)
    loop.pop("include_num_input_tokens_seen", None)  # the preference collators count no input tokens
    args = config_class(**loop, **settings, max_length=spec.training.max_seq_length)
    progress = ProgressCallback(report)
    trainer = trainer_class(
        model=peft_model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[progress],
    )
    trainer.remove_callback(PrinterCallback)
    if fast.fp32_adapter:
        speed.keep_adapter_fp32(peft_model)
    trainer.add_callback(CheckpointCallback(report))
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if progress.stopped:
        raise Cancelled()
    if progress.drained and trainer.state.global_step < trainer.state.max_steps:
        raise Drained(trainer.state.global_step)
    eval_loss = None
    if eval_set is not None:
        last = progress.last_eval
        fresh = last is not None and last["step"] == trainer.state.global_step
        eval_loss = last["eval_loss"] if fresh else trainer.evaluate().get("eval_loss")

    # Save the trained adapter only (not TRL's frozen reference copy)
    adapter_dir = out_dir / "adapter"
    adapter_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True, selected_adapters=["default"])
    tokenizer.save_pretrained(adapter_dir)
    result = TrainingResult(
        adapter_dir=str(adapter_dir),
        steps=trainer.state.global_step,
        train_loss=output.training_loss if math.isfinite(output.training_loss) else None,
        eval_loss=eval_loss,
        trainable_parameters=trainable,
        total_parameters=total,
        runtime_seconds=round(time.monotonic() - started, 2),
        device=modelling.device_type(),
        train_seconds=output.metrics.get("train_runtime"),
        peak_memory_bytes=speed.peak_memory_bytes(),
    )
    write_training_spec(adapter_dir, spec)
    (adapter_dir / "metrics.json").write_text(json.dumps(asdict(result), indent=2))
    return result

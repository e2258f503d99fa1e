"""A hand-written notebook QLoRA recipe (HF Trainer + PEFT + bitsandbytes), as a user's notebook runs it.

Faithful to the common notebook recipe: `prepare_model_for_kbit_training` (every non-4-bit layer upcast to fp32),
reentrant gradient checkpointing, `DataCollatorForLanguageModeling(mlm=False)` padding each batch with
pad = EOS, the bitsandbytes default (fp32) compute dtype, fp16 autocast on a GPU, `paged_adamw_8bit`.
Each `--with-*` flag turns on one of the service's techniques alone, for docs/benchmarks.md.

    python -m bench.recipe_baseline --model DIR --train train.jsonl --eval eval.jsonl --out DIR --result r.json
"""

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

from bench.workload import Workload, read_texts


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True, help="JSON file the figures are written to")
    p.add_argument("--workload", type=json.loads, default="{}", help="Workload fields as JSON")
    p.add_argument("--with-padding-free", action="store_true", help="flattened batches, no padding")
    p.add_argument("--with-non-reentrant", action="store_true", help="non-reentrant gradient checkpointing")
    p.add_argument("--with-bf16-compute", action="store_true", help="bf16 compute dtype for 4-bit weights")
    p.add_argument("--with-no-upcast", action="store_true", help="skip prepare_model_for_kbit_training's fp32 casts")
    p.add_argument("--attn", default=None, help="attn_implementation (default: what transformers picks)")
    return p.parse_args()


def _load_model(args: argparse.Namespace, w: Workload, cuda: bool) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qconfig = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    if args.with_bf16_compute:
        qconfig.bnb_4bit_compute_dtype = torch.bfloat16
    kwargs: dict[str, Any] = {"quantization_config": qconfig, "device_map": "auto" if cuda else None}
    if args.attn:
        kwargs["attn_implementation"] = args.attn
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    model.train()
    checkpointing = {"use_reentrant": not args.with_non_reentrant}
    if args.with_no_upcast:  # what prepare_model_for_kbit_training does, less the fp32 casts
        for param in model.parameters():
            param.requires_grad = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs=checkpointing)
    config = LoraConfig(
        r=w.lora_r,
        lora_alpha=w.lora_alpha,
        target_modules="all-linear",
        lora_dropout=w.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def main() -> None:
    args = _args()
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer

    started = time.monotonic()  # "submit": the notebook's imports have run, the recipe starts
    w = Workload(**args.workload)
    cuda = torch.cuda.is_available()
    torch.manual_seed(w.seed)
    model = _load_model(args, w, cuda)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.eos_token

    def tokenize(batch: dict[str, list]) -> dict[str, Any]:
        return tokenizer(batch["text"], truncation=True, max_length=w.max_seq_length)

    train = Dataset.from_list([{"text": t} for t in read_texts(args.train)]).map(tokenize, batched=True)
    evals = Dataset.from_list([{"text": t} for t in read_texts(args.eval)]).map(tokenize, batched=True)
    if args.with_padding_free:
        collator = transformers.DataCollatorWithFlattening()
    else:
        collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
    training_args = transformers.TrainingArguments(
        output_dir=str(args.out / "trainer"),
        per_device_train_batch_size=w.batch_size,
        per_device_eval_batch_size=w.batch_size,
        gradient_accumulation_steps=w.gradient_accumulation_steps,
        warmup_steps=w.warmup_steps,
        max_steps=w.max_steps,
        learning_rate=w.learning_rate,
        fp16=cuda and not args.with_bf16_compute,
        bf16=cuda and args.with_bf16_compute,
        use_cpu=not cuda,
        optim="paged_adamw_8bit",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=w.seed,
        data_seed=w.seed,
        remove_unused_columns=True,
        include_num_input_tokens_seen="non_padding",  # counting only: real tokens, for tokens/s
    )
    trainer = transformers.Trainer(
        model=model,
        args=training_args,
        train_dataset=train.remove_columns(["text"]),
        eval_dataset=evals.remove_columns(["text"]),
        data_collator=collator,
    )
    model.config.use_cache = False
    cpu_started = time.process_time()
    output = trainer.train()
    train_cpu_seconds = time.process_time() - cpu_started
    trainer_eval = trainer.evaluate()["eval_loss"]
    model.save_pretrained(args.out / "adapter")
    to_adapter = time.monotonic() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        "side": "recipe",
        "tokens": trainer.state.num_input_tokens_seen,
        "train_seconds": output.metrics["train_runtime"],
        "train_cpu_seconds": train_cpu_seconds,
        "seconds_to_adapter": to_adapter,
        # The whole process's peak, model load included, as the worker reports its own.
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes(),
        "memory_kind": "cuda_peak_allocated" if cuda else "peak_rss",
        "train_losses": losses,
        "trainer_eval_loss": trainer_eval,
        "steps": trainer.state.global_step,
        "adapter_dir": str(args.out / "adapter"),
    }
    args.result.write_text(json.dumps(result, indent=2))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


if __name__ == "__main__":
    main()

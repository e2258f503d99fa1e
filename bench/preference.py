"""DPO step time: the service's preference recipe against TRL's DPOTrainer with its defaults, same model and data.

python -m bench.preference            # the CPU bench model (bench/workload.py), 4-bit QLoRA, 20 steps each
python -m bench.preference --steps 6  # a quick end-to-end check

Both sides train the same 4-bit base with the same LoRA (r 16, all linear layers), batch, steps and learning rate
on the same pairs (prompt: the first half of a bench text; chosen: its second half; rejected: another text's). What
differs is everything the service chooses on its own (worker/training/speed.py, loop.py) against TRL's defaults.
Step time is the trainer's `train_runtime / max_steps` (model loading and data preparation not counted).
"""

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(tempfile.mkdtemp(prefix="bench-preference-"))
os.environ["FT_MODELS_DIR"] = str(ROOT / "models")  # before app.core.config reads the environment

import torch  # noqa: E402

from bench.workload import Workload, make_model, make_texts  # noqa: E402


def pairs(n: int, workload: Workload) -> list[dict[str, str]]:
    texts = make_texts(n * 2, workload, workload.seed)
    rng = random.Random(workload.seed)
    rows = []
    for i in range(n):
        words = texts[i].split()
        cut = max(1, len(words) // 2)
        other = texts[n + i].split()
        rows.append(
            {
                "prompt": " ".join(words[:cut]),
                "chosen": " " + " ".join(words[cut:]),
                "rejected": " " + " ".join(other[rng.randrange(len(other)) :] or other),
            }
        )
    return rows


def ours(model_dir: Path, data: Path, out: Path, w: Workload, steps: int) -> float:
    from app.spec.job import JobSpec
    from worker.training import preference

    spec = JobSpec.model_validate(
        {
            "base_model": str(model_dir.name),
            "dataset": "ds_" + "0" * 24,
            "format": {"type": "preference"},
            "method": {"type": "dpo"},
            "lora": {"r": w.lora_r, "alpha": w.lora_alpha, "dropout": w.lora_dropout},
            "training": {
                "max_steps": steps,
                "batch_size": w.batch_size,
                "learning_rate": w.learning_rate,
                "max_seq_length": w.max_seq_length,
                "checkpoint_every_steps": None,
                "logging_steps": 5,
            },
        }
    )
    result = preference.run(spec, data, out)
    return result.train_seconds / result.steps


def trl_defaults(model_dir: Path, rows: list[dict], out: Path, w: Workload, steps: int) -> float:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lora = LoraConfig(
        r=w.lora_r,
        lora_alpha=w.lora_alpha,
        lora_dropout=w.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    args = DPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=w.batch_size,
        learning_rate=w.learning_rate,
        max_length=w.max_seq_length,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=5,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )
    output = trainer.train()
    return output.metrics["train_runtime"] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=320)
    args = parser.parse_args()
    w = Workload(max_seq_length=256)
    model_dir = make_model(w, ROOT / "models" / "bench-llama")
    rows = pairs(args.rows, w)
    data = ROOT / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    started = time.monotonic()
    ours_step = ours(model_dir, data, ROOT / "ours", w, args.steps)
    trl_step = trl_defaults(model_dir, rows, ROOT / "trl", w, args.steps)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "steps": args.steps,
        "batch_size": w.batch_size,
        "ours_seconds_per_step": round(ours_step, 3),
        "trl_defaults_seconds_per_step": round(trl_step, 3),
        "speedup": round(trl_step / ours_step, 2),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

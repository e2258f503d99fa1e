"""Every adapter method side by side on the benchmark model: trainable parameters, memory, tokens/s, eval loss.

Each method trains through the real recipe (worker.training.recipe.run) in a process of its own, on the same
4-bit base, data, batch and steps as `bench.run` (bench/workload.py); only the adapter and its learning rate
differ. Eval loss is bench.workload's one measure, for every method alike.

    python -m bench.methods                          # every method at its PEFT-guide learning rate
    python -m bench.methods --sweep                  # and at each rate in LEARNING_RATES (for docs/methods.md)
    python -m bench.methods --methods lora ia3 --steps 10
    python -m bench.methods --count                  # trainable parameters on TinyLlama-1.1B's shape (no weights)
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.workload import BENCH_MODEL, Workload, job_spec, make_model, write_dataset

ROOT = Path(__file__).resolve().parents[1]
# Each method with the learning rate its PEFT guide trains with (the LoRA family at the bench's own rate).
METHODS: dict[str, tuple[dict[str, Any], float]] = {
    "lora": ({"method": "lora"}, 1e-3),
    "dora": ({"method": "dora"}, 1e-3),
    "rslora": ({"method": "rslora"}, 1e-3),
    "ia3": ({"method": "ia3"}, 3e-3),
    "prefix_tuning": ({"method": "prefix_tuning"}, 1e-2),
    "prompt_tuning": ({"method": "prompt_tuning", "init_text": "the quick brown fox jumps over the lazy dog"}, 3e-2),
    "p_tuning": ({"method": "p_tuning"}, 1e-3),
}
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--steps", type=int, help="override the workload's max_steps")
    p.add_argument("--sweep", action="store_true", help="also train each method at every rate in LEARNING_RATES")
    p.add_argument("--lrs", type=float, nargs="+", help="train the methods at these rates instead of their guide's")
    p.add_argument("--workdir", type=Path, help="default: var/bench/methods-<timestamp>")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads per run (OMP_NUM_THREADS); 1 on a shared machine, where spinning threads that "
        "wait for one another make each small matmul many times slower",
    )
    p.add_argument("--count", action="store_true", help="only count trainable parameters on TinyLlama-1.1B's shape")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: train one method in this process
    p.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    return p.parse_args()


def _machine(argv: list[str]) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown",
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "load_average_at_start": os.getloadavg(),
        "command": " ".join(["python", "-m", "bench.methods", *argv]),
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
    }


def train_one(method: str, lr: float, w: Workload, workdir: Path) -> dict[str, Any]:
    """Train one method in this process and measure it (the child's side)."""
    from app.spec.job import JobSpec
    from bench.workload import eval_loss
    from worker.training import recipe

    adapter, _ = METHODS[method]
    raw = job_spec(w, "train", "eval", learning_rate=lr, checkpoint_every_steps=None)
    spec = JobSpec.model_validate({**raw, "validation_dataset": None, "adapter": adapter})
    out = workdir / f"{method}-{lr:g}"
    result = recipe.run(spec, workdir / "dataset" / "train.jsonl", out)
    model_dir = Path(os.environ["FT_MODELS_DIR"]) / BENCH_MODEL
    adapter_dir = Path(result.adapter_dir)
    return {
        "method": method,
        "learning_rate": lr,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "adapter_bytes": (adapter_dir / "adapter_model.safetensors").stat().st_size,
        "peak_memory_bytes": result.peak_memory_bytes,  # peak RSS of this process on the CPU, before the eval
        "tokens_per_second": result.train_tokens / result.train_seconds if result.train_seconds else None,
        "train_seconds": result.train_seconds,
        "train_loss": result.train_loss,
        "eval_loss": eval_loss(model_dir, adapter_dir, workdir / "dataset" / "eval.jsonl", w.max_seq_length),
    }


def base_eval_loss(w: Workload, workdir: Path) -> float:
    """The base model's eval loss, by the same measure: through a LoRA adapter fresh from init (B = 0, a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bench.workload import eval_loss

    model_dir = Path(os.environ["FT_MODELS_DIR"]) / BENCH_MODEL
    noop = workdir / "untrained-lora"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(target_modules="all-linear")
    ).save_pretrained(noop)
    return eval_loss(model_dir, noop, workdir / "dataset" / "eval.jsonl", w.max_seq_length)


def count_on_tinyllama() -> None:
    """Each method's trainable parameters on TinyLlama-1.1B's architecture, built on the meta device (no weights)."""
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from app.spec.job import JobSpec
    from bench.workload import TINYLLAMA_MODEL
    from worker.training.adapters import peft_config

    config = LlamaConfig(**{k: v for k, v in TINYLLAMA_MODEL.items() if k != "dtype"})
    print("| method | trainable parameters | % of TinyLlama-1.1B |\n| --- | ---: | ---: |")
    for method, (adapter, _) in METHODS.items():
        if method == "prompt_tuning":  # text init reads real embeddings, which the meta device has not
            adapter = {"method": "prompt_tuning", "init": "random"}
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        spec = JobSpec.model_validate({"base_model": "shape-only", "dataset": "none", "adapter": adapter})
        peft_model = get_peft_model(model, peft_config(spec, model))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in peft_model.parameters())
        print(f"| {method} | {trainable:,} | {100 * trainable / total:.3f}% |")


def _run_child(method: str, lr: float, w: Workload, workdir: Path) -> dict[str, Any]:
    result = workdir / f"{method}-{lr:g}.json"
    argv = ["--child", method, "--lr", str(lr), "--workdir", str(workdir), "--steps", str(w.max_steps)]
    with (workdir / f"{method}-{lr:g}.log").open("w") as log:
        command = [sys.executable, "-m", "bench.methods", *argv]
        subprocess.run(command, cwd=ROOT, env=os.environ, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(result.read_text())


def print_table(rows: list[dict[str, Any]], base_loss: float) -> None:
    print(f"\nbase model eval loss (no adapter): {base_loss:.3f}\n")
    print("| method | lr | trainable params | % of model | adapter file | peak RSS | tokens/s | eval loss |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        share = 100 * r["trainable_parameters"] / r["total_parameters"]
        print(
            f"| {r['method']} | {r['learning_rate']:g} | {r['trainable_parameters']:,} | {share:.2f}% "
            f"| {r['adapter_bytes'] / 1024:,.0f} KiB | {r['peak_memory_bytes'] / 2**20:,.0f} MiB "
            f"| {r['tokens_per_second']:,.0f} | {r['eval_loss']:.3f} |"
        )


def main() -> None:
    args = _args()
    w = Workload(**({"max_steps": args.steps} if args.steps else {}))
    if args.count:
        count_on_tinyllama()
        return
    if args.child:
        result = train_one(args.child, args.lr, w, args.workdir)
        (args.workdir / f"{args.child}-{args.lr:g}.json").write_text(json.dumps(result, indent=2))
        return
    workdir = (args.workdir or ROOT / "var" / "bench" / time.strftime("methods-%Y%m%d-%H%M%S")).resolve()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ.update(
        {
            "FT_DATA_DIR": str(workdir / "data"),
            "FT_MODELS_DIR": str(workdir / "data" / "models"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    machine = _machine(sys.argv[1:])
    print(f"methods bench in {workdir}: {w.max_steps} steps, {machine['nproc']} CPUs ({machine['cpu']})")
    make_model(w, Path(os.environ["FT_MODELS_DIR"]) / BENCH_MODEL)
    write_dataset(w, workdir / "dataset")
    runs = [(m, lr) for m in args.methods for lr in (args.lrs or [METHODS[m][1]])]
    if args.sweep:
        runs += [(m, lr) for m in args.methods for lr in LEARNING_RATES if lr != METHODS[m][1]]
    # Runs into an existing workdir (same model and data) add to its figures; a rerun replaces its own row.
    earlier = json.loads((workdir / "methods.json").read_text()) if (workdir / "methods.json").exists() else {}
    kept = [r for r in earlier.get("runs", []) if (r["method"], r["learning_rate"]) not in runs]
    rows = [{"machine": earlier.get("machine"), **r} for r in kept]
    for method, lr in runs:
        print(f"  {method} at lr {lr:g} ...", flush=True)
        rows.append({**_run_child(method, lr, w, workdir), "machine": machine})
    base_loss = base_eval_loss(w, workdir)
    results = {"workload": w.to_json(), "base_eval_loss": base_loss, "runs": rows}
    (workdir / "methods.json").write_text(json.dumps(results, indent=2))
    print_table(sorted(rows, key=lambda r: (list(METHODS).index(r["method"]), r["learning_rate"])), base_loss)
    print(f"\nfigures: {workdir / 'methods.json'}")


if __name__ == "__main__":
    main()

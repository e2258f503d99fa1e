"""The embedded serving backend's generation: tokens/s and time to first token, batched vs one at a time, with 1
adapter and with 8 in rotation (each request another adapter: the cost of switching), on the bench model.

In-process, as the `finetune.serve` task runs it (worker/serving_models.py + worker/serving_generation.py), minus
Redis and SQL: N requests arrive together; "batched" answers them in one mixed-adapter batch, "serial" one after
another (each request's time to first token counts its wait). Adapters are random LoRAs (r 16 on the attention
projections); EOS is ignored so every row generates max_tokens (random weights would stop at random).

    python -m bench.serving                      # bench model (CPU), 8 requests, 64 tokens each
    python -m bench.serving --model tinyllama    # TinyLlama-1.1B's shape (random weights), for a GPU
    python -m bench.serving --requests 4 --max-tokens 32 --threads 1
    python -m bench.serving --vllm               # also the same load on a vLLM server (bench/serving_vllm.py)
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.workload import BENCH_MODEL, Workload, make_model

ROOT = Path(__file__).resolve().parents[1]
RANK = 16
PROMPT = "<|user|>\nThe quick brown fox jumps over the lazy dog. Tell me a story.</s>\n<|assistant|>\n"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["cpu", "tinyllama"], default="cpu", help="bench/workload.py's model shapes")
    p.add_argument("--requests", type=int, default=8, help="requests arriving together")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="runs per scenario; the median is shown")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--workdir", type=Path, help="default: var/bench/serving")
    p.add_argument("--vllm", action="store_true", help="also rows from vLLM (.venv-vllm, `make vllm`), same load")
    return p.parse_args()


def _random_adapters(base: Path, out: Path, count: int) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = {}
    for i in range(count):
        path = out / f"adapter-{i}"
        if not (path / "adapter_config.json").is_file():
            torch.manual_seed(i)
            targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
            config = LoraConfig(r=RANK, lora_alpha=32, target_modules=targets, init_lora_weights=False)
            get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(path)
        dirs[f"adapter_{i}"] = path
    return dirs


def _run(model: Any, tokenizer: Any, completions: list[Any], batched: bool) -> dict[str, float]:
    """One scenario: every request answered; tokens/s over the wall time, time to first token per request."""
    from worker.serving_generation import RowTracker, generate

    first: dict[str, float] = {}
    tokens = 0
    step = RowTracker._step

    def first_token(tracker: RowTracker, row: Any, new: list[int], now: float) -> None:
        # the first token, whether or not it decodes to text (a random model's often do not)
        first.setdefault(row.completion.id, time.perf_counter())
        step(tracker, row, new, now)

    def publish(call_id: str, **entry: Any) -> None:
        nonlocal tokens
        if entry["type"] == "usage":
            tokens += entry["completion_tokens"]

    RowTracker._step = first_token

    started = time.perf_counter()
    for batch in [completions] if batched else [[c] for c in completions]:
        generate(model, tokenizer, batch, publish, lambda _: None)
    wall = time.perf_counter() - started
    RowTracker._step = step
    ttft = [first[c.id] - started for c in completions if c.id in first]
    return {"tokens_per_s": tokens / wall, "ttft_ms": statistics.mean(ttft) * 1000, "wall_s": wall, "tokens": tokens}


def main() -> None:
    args = _args()
    workdir = (args.workdir or ROOT / "var" / "bench" / "serving").resolve()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.update(
        {"FT_DATA_DIR": str(workdir / "data"), "FT_MODELS_DIR": str(workdir / "models"), "HF_HUB_OFFLINE": "1"}
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from app.spec.job import JobSpec
    from worker import serving_generation
    from worker.serving_generation import Completion
    from worker.serving_models import ServingModels

    if args.threads:
        torch.set_num_threads(args.threads)
    name = f"{BENCH_MODEL}-{args.model}"
    base = make_model(Workload(model=args.model), workdir / "models" / name)
    adapters = _random_adapters(base, workdir / "adapters", 8)
    spec = JobSpec.model_validate({"base_model": name, "dataset": "ds_" + "0" * 24, "quantization": None})
    models = ServingModels(max_adapters=8, max_bytes=2**40)
    model, tokenizer = models.base(spec)
    started = time.perf_counter()
    models.use(adapters)
    load_ms = (time.perf_counter() - started) * 1000 / len(adapters)
    model.generation_config.eos_token_id = None
    serving_generation._eos_ids = lambda *_: set()  # every row runs to max_tokens: see the module docstring

    def requests(rotation: int) -> list[Completion]:
        names = list(adapters)[:rotation] if rotation else [None]
        return [
            Completion(f"cmpl_{i}", PROMPT, args.max_tokens, temperature=0.0, adapter=names[i % len(names)])
            for i in range(args.requests)
        ]

    device = next(models.model.parameters()).device
    print(
        f"serving bench: {name} on {device}, {torch.get_num_threads()} threads, {args.requests} requests x "
        f"{args.max_tokens} tokens, median of {args.repeats}; adapter load {load_ms:.0f} ms each"
    )
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    print(f"command: python -m bench.serving {' '.join(sys.argv[1:])}".rstrip())
    _run(models.model, tokenizer, requests(1), batched=True)  # warm-up
    scenarios = [(rotation, batched) for rotation in (0, 1, 8) for batched in (True, False)]
    runs: dict[tuple[int, bool], list[dict[str, float]]] = {key: [] for key in scenarios}
    for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere spreads over every scenario
        for rotation, batched in scenarios:
            runs[(rotation, batched)].append(_run(models.model, tokenizer, requests(rotation), batched))
    rows = [(rotation, "batched" if batched else "serial", results) for (rotation, batched), results in runs.items()]
    if args.vllm:
        rows += _vllm_rows(args, base, adapters, torch.get_num_threads(), workdir)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("| adapters | mode | tokens/s | mean time to first token | wall |")
    print("|---|---|---:|---:|---:|")
    for rotation, mode, results in sorted(rows, key=lambda r: r[0]):  # stable: each rotation's rows together
        row = sorted(results, key=lambda r: r["tokens_per_s"])[len(results) // 2]
        label = "base only" if rotation == 0 else f"{rotation} in rotation" if rotation > 1 else "1"
        print(f"| {label} | {mode} | {row['tokens_per_s']:,.0f} | {row['ttft_ms']:,.0f} ms | {row['wall_s']:.2f} s |")


def _vllm_rows(
    args: argparse.Namespace, base: Path, adapters: dict[str, Path], threads: int, workdir: Path
) -> list[tuple[int, str, list[dict[str, float]]]]:
    """The same scenarios on a vLLM server, after the embedded ones (the server is stopped before the table)."""
    from bench import serving_vllm

    env, flags = serving_vllm.settings(threads, RANK, len(adapters))
    print(f"load average before vLLM: {os.getloadavg()[0]:.2f}")
    print("vLLM settings: " + " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(flags))
    runs, load_ms = serving_vllm.bench(
        base,
        adapters,
        requests=args.requests,
        max_tokens=args.max_tokens,
        repeats=args.repeats,
        threads=threads,
        rank=RANK,
        prompt=PROMPT,
        log=workdir / "vllm.log",
    )
    tokens = {r["tokens"] for results in runs.values() for r in results}
    print(f"vLLM: adapter registration {load_ms:.0f} ms each; tokens per scenario {sorted(tokens)}")
    return [(rotation, "vllm", results) for rotation, results in runs.items()]


if __name__ == "__main__":
    main()

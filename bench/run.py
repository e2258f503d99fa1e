"""`make bench`: the seed notes' recipe against this service, same model, data and settings, in one sitting.

python -m bench.run --quick          # a few steps: checks the whole bench end to end
python -m bench.run                  # the full CPU bench (under ~10 minutes on 2 quiet cores)
python -m bench.run --gpu            # GPU: TinyLlama-1.1B architecture, ours in-process (bench/gpu.sh)
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import print_table, write_results
from bench.workload import BENCH_MODEL, Workload, make_model, write_dataset

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"max_steps": 6, "train_rows": 160, "eval_rows": 24}
GPU = {
    "model": "tinyllama",
    "max_steps": 30,
    "train_rows": 600,
    "eval_rows": 32,
    "median_tokens": 900,
    "length_sigma": 0.6,
    "max_seq_length": 2048,
    "batch_size": 4,
    "gradient_accumulation_steps": 2,
    "learning_rate": 2e-4,
    "warmup_steps": 3,
}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few steps on little data (validates the bench)")
    p.add_argument("--gpu", action="store_true", help="the GPU workload; ours runs in-process (no Redis there)")
    p.add_argument("--steps", type=int, help="override max_steps")
    p.add_argument("--workdir", type=Path, help="default: var/bench/<timestamp>")
    p.add_argument("--redis-url", default=os.environ.get("FT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6"))
    p.add_argument("--skip-api", action="store_true", help="leave out the API load figures")
    p.add_argument("--techniques", action="store_true", help="also time each technique alone (bench.techniques)")
    return p.parse_args()


def _subprocess(module: str, argv: list[str], log: Path) -> None:
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", module, *argv], cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT
        )


def run_recipe(w: Workload, model_dir: Path, train: Path, evals: Path, workdir: Path) -> dict[str, Any]:
    """The seed notes' recipe in its own process, as a notebook kernel would run it."""
    out, result = workdir / "recipe", workdir / "recipe.json"
    argv = ["--model", str(model_dir), "--train", str(train), "--eval", str(evals), "--out", str(out)]
    _subprocess(
        "bench.recipe_baseline",
        [*argv, "--result", str(result), "--workload", json.dumps(w.to_json())],
        out.with_suffix(".log"),
    )
    return json.loads(result.read_text())


def run_ours_direct(w: Workload, train: Path, evals: Path, workdir: Path) -> dict[str, Any]:
    """Our worker's training path without the service around it (where no Redis can run)."""
    out, result = workdir / "ours", workdir / "ours.json"
    argv = ["--train", str(train), "--eval", str(evals), "--out", str(out), "--result", str(result)]
    _subprocess("bench.ours_direct", [*argv, "--workload", json.dumps(w.to_json())], out.with_suffix(".log"))
    return json.loads(result.read_text())


def _machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "load_average_at_start": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.run", *sys.argv[1:]]),
    }


def _service_figures(w: Workload, model_dir: Path, data: tuple[Path, Path], workdir: Path, skip_api: bool) -> dict:
    """Recipe and ours with the stack up (the worker warm and idle while the recipe runs), then its overheads."""
    from bench import api_load, overhead
    from bench.service import Service, run_ours

    service = Service.start(dict(os.environ), workdir / "logs")
    figures: dict[str, Any] = {}
    try:
        figures["recipe"] = run_recipe(w, model_dir, *data, workdir)
        figures["ours"] = run_ours(service, w, *data, workdir / "ours")
        spec = figures["ours"]["spec"]
        # "A worker that is already running": idle and ready. Its pool child is replaced after every job
        # (FT_WORKER_MAX_TASKS_PER_CHILD=1), which took up to ~6 s after the bench job (seen as a 4.7 s claim).
        time.sleep(10)
        figures["warm_start"] = overhead.warm_start(service, spec)
        figures["warm_start"]["model_load_s"] = overhead.model_load_seconds(spec)
        figures["reporting"] = overhead.reporting_cost("bench")
        if not skip_api:
            key = service.client.headers["Authorization"].split()[-1]
            figures["get_job"] = api_load.get_job_load(service.stack.base_url, key, figures["ours"]["job_id"])
            long_run = overhead.insert_job("bench", status="succeeded")
            api_load.insert_points(long_run, 100_000)
            figures["metrics_100k"] = api_load.metrics_read(service.client, long_run)
    finally:
        service.stop()
    return figures


def _add_mfu(figures: dict[str, Any], model_dir: Path, train: Path, w: Workload) -> None:
    """Model-FLOPs utilisation of each side, against the card's dense bf16 peak (bench.report.PEAK_FLOPS)."""
    import torch

    from bench.report import PEAK_FLOPS
    from bench.workload import flops_per_token

    name = torch.cuda.get_device_name()
    peak = next((flops for card, flops in PEAK_FLOPS.items() if card in name), None)
    per_token = flops_per_token(model_dir, train, w.max_seq_length)
    for side in ("recipe", "ours"):
        figures[side]["device"] = name
        if peak:
            figures[side]["mfu"] = figures[side]["tokens"] / figures[side]["train_seconds"] * per_token / peak


def main() -> None:
    args = _args()
    preset = GPU if args.gpu else (QUICK if args.quick else {})
    w = Workload(**{**preset, **({"max_steps": args.steps} if args.steps else {})})
    workdir = (args.workdir or ROOT / "var" / "bench" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    # One environment for the stack and for this process's own reads of the record (settings read it once).
    from bench.service import service_env

    os.environ.update(service_env(workdir, args.redis_url))
    machine = _machine()
    print(f"bench in {workdir}: {w.max_steps} steps, model {w.model}, {machine['nproc']} CPUs ({machine['cpu']})")
    model_dir = make_model(w, Path(os.environ["FT_MODELS_DIR"]) / BENCH_MODEL)
    train, evals = write_dataset(w, workdir / "dataset")
    if args.gpu:
        figures = {"recipe": run_recipe(w, model_dir, train, evals, workdir)}
        figures["ours"] = run_ours_direct(w, train, evals, workdir)
    else:
        figures = _service_figures(w, model_dir, (train, evals), workdir, args.skip_api)
    from bench.workload import eval_loss

    for side in ("recipe", "ours"):
        figures[side]["eval_loss"] = eval_loss(model_dir, Path(figures[side]["adapter_dir"]), evals, w.max_seq_length)
    if args.gpu:
        _add_mfu(figures, model_dir, train, w)
    if args.techniques:
        from bench.techniques import measure_all

        figures["techniques"] = measure_all(w, model_dir, train)
    results = {"machine": machine, "workload": w.to_json(), **figures}
    print_table(results)
    print(f"\nfigures: {write_results(results, workdir)}")


if __name__ == "__main__":
    main()

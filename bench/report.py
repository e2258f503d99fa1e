"""The bench's side-by-side table, the goal checks, and the JSON record of every figure."""

import json
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
# Dense bf16/fp16 tensor-core peaks (no sparsity), for model-FLOPs utilisation.
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}


def final_train_loss(losses: list[float]) -> float:
    """Mean of the last tenth of the logged step losses (at least 3): one step's loss is too noisy to compare."""
    tail = losses[-max(3, len(losses) // 10) :]
    return sum(tail) / len(tail)


def _row(name: str, recipe: float, ours: float, fmt: str, better: str) -> str:
    ratio = ours / recipe if recipe else float("nan")
    return f"{name:<28}{recipe:>14{fmt}}{ours:>14{fmt}}{ratio:>10.2f}x  ({better} is better)"


def print_table(results: dict[str, Any]) -> None:
    r, o = results["recipe"], results["ours"]
    for side in (r, o):
        side["tokens_per_second"] = side["tokens"] / side["train_seconds"]
        side["tokens_per_cpu_second"] = side["tokens"] / side["train_cpu_seconds"]
        side["final_train_loss"] = final_train_loss(side["train_losses"])
    kind = "CUDA peak allocated" if r.get("memory_kind") == "cuda_peak_allocated" else "peak RSS"
    print(f"\n{'':<28}{'recipe':>14}{'ours':>14}{'ours/recipe':>13}")
    print(_row("tokens/s (real tokens)", r["tokens_per_second"], o["tokens_per_second"], ".1f", "higher"))
    print(_row("tokens per CPU-second", r["tokens_per_cpu_second"], o["tokens_per_cpu_second"], ".1f", "higher"))
    print(_row("seconds to adapter", r["seconds_to_adapter"], o["seconds_to_adapter"], ".1f", "lower"))
    print(_row(f"{kind} (MiB)", r["peak_memory_bytes"] / MIB, o["peak_memory_bytes"] / MIB, ".0f", "lower"))
    print(_row("final train loss", r["final_train_loss"], o["final_train_loss"], ".4f", "lower"))
    print(_row("eval loss (same evaluator)", r["eval_loss"], o["eval_loss"], ".4f", "lower"))
    print(_row("real tokens trained", r["tokens"], o["tokens"], ".0f", "same"))
    if "mfu" in r:
        print(_row("model-FLOPs utilisation", r["mfu"], o["mfu"], ".3f", "higher"))
    _print_goals(results)
    _print_service(results)


def _print_goals(results: dict[str, Any]) -> None:
    r, o = results["recipe"], results["ours"]
    speed = o["tokens_per_second"] / r["tokens_per_second"]
    loss = o["eval_loss"] / r["eval_loss"] - 1
    memory = o["peak_memory_bytes"] / r["peak_memory_bytes"]
    gpu = "mfu" in r
    need_speed, need_memory = (2.0, 0.6) if gpu else (1.5, 1.0)
    print(f"\ngoal ({'GPU' if gpu else 'CPU'}):")
    print(f"  tokens/s ≥ {need_speed}x recipe: {speed:.2f}x  {'met' if speed >= need_speed else 'NOT met'}")
    print(f"  eval loss within ±2% of recipe: {100 * loss:+.2f}%  {'met' if loss <= 0.02 else 'NOT met'}")
    print(f"  peak memory ≤ {need_memory:.0%} of recipe: {memory:.0%}  {'met' if memory <= need_memory else 'NOT met'}")


def _print_service(results: dict[str, Any]) -> None:
    o = results["ours"]
    step_ms = 1000 * o["train_seconds"] / o["steps"]
    if rep := results.get("reporting"):
        print("\nservice overhead:")
        print(
            f"  progress reporting: {rep['in_step_ms']:.2f} ms on the training thread and {rep['cpu_ms']:.2f} ms CPU "
            f"per step = {100 * rep['in_step_ms'] / step_ms:.2f}% / {100 * rep['cpu_ms'] / step_ms:.2f}% "
            f"of a {step_ms:.0f} ms step (goal < 1%)"
        )
    if warm := results.get("warm_start"):
        extra = warm["to_first_step_s"] - warm["model_load_s"] - step_ms / 1000
        print(
            f"  warm worker, queued job: running after {warm['to_running_s']:.2f} s, first step seen after "
            f"{warm['to_first_step_s']:.2f} s = model load {warm['model_load_s']:.2f} s"
            f" + one step {step_ms / 1000:.2f} s "
            f"+ {extra:.2f} s of service and setup (goal ≤ 5 s)"
        )
    if get := results.get("get_job"):
        print("\nAPI under load (one uvicorn worker, loopback):")
        print(
            f"  GET /jobs/{{id}}: {get['requests_per_second']:.0f} req/s, p50 {get['p50_ms']:.1f} ms, "
            f"p99 {get['p99_ms']:.1f} ms, {get['errors']} errors ({get['tool']}, {get['connections']} connections, "
            f"{get['seconds']} s; goal ≥ 500 req/s, p99 < 50 ms)"
        )
    if metrics := results.get("metrics_100k"):
        print(
            f"  GET /jobs/{{id}}/metrics?max_points=1000 on 100,000 points: median {metrics['median_ms']:.0f} ms, "
            f"best {metrics['best_ms']:.0f} ms, {metrics['points_returned']} points back (goal < 100 ms)"
        )
    if techniques := results.get("techniques"):
        print("\neach technique alone (median step time, same batches, interleaved):")
        for t in techniques:
            print(f"  {t['name']:<44}{t['without_ms']:>9.0f} ms → {t['with_ms']:>7.0f} ms  {t['speedup']:.2f}x")


def write_results(results: dict[str, Any], workdir: Path) -> Path:
    path = workdir / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return path

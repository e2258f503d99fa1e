"""Where a training step's time goes: the worker's recipe in-process on the bench workload, under torch.profiler.

python -m bench.profile [--steps 8] [--training '{"cpu_kernels": false}'] [--rows 30]

Profiles micro-batches 9-24 (after warm-up) and prints the ops by self CPU time, then the run's tokens/s (the
profiler slows it down: compare tokens/s only between runs of this command).
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="optimizer steps (4 micro-batches each)")
    p.add_argument("--training", type=json.loads, default="{}", help="spec training overrides, as JSON")
    p.add_argument("--rows", type=int, default=30, help="profiler table rows")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ft-profile-"))
    os.environ.setdefault("FT_MODELS_DIR", str(work / "models"))
    import trl
    from torch.profiler import ProfilerActivity, profile

    from app.spec.job import JobSpec
    from bench.workload import BENCH_MODEL, Workload, job_spec, make_model, write_dataset
    from worker.training import recipe

    w = Workload(max_steps=args.steps)
    make_model(w, Path(os.environ["FT_MODELS_DIR"]) / BENCH_MODEL)
    train, evals = write_dataset(w, work / "dataset")
    spec = JobSpec.model_validate(job_spec(w, "train", "eval", checkpoint_every_steps=None, **args.training))

    training_step = trl.SFTTrainer.training_step
    state: dict[str, Any] = {"n": 0, "profiler": None}

    def profiled_step(self: Any, *a: Any, **k: Any) -> Any:
        state["n"] += 1
        if state["n"] == 9:
            state["profiler"] = profile(activities=[ProfilerActivity.CPU])
            state["profiler"].__enter__()
        result = training_step(self, *a, **k)
        if state["n"] == 24 and state["profiler"] is not None:
            state["profiler"].__exit__(None, None, None)
            table = state["profiler"].key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
            print(table, file=sys.stderr)
        return result

    trl.SFTTrainer.training_step = profiled_step
    result = recipe.run(spec, train, work / "out", validation_path=evals)
    print(f"tokens/s {result.train_tokens / result.train_seconds:.0f} (profiled), eval loss {result.eval_loss:.4f}")


if __name__ == "__main__":
    main()

"""Our worker's training path (worker.training.recipe.run) without the service, for machines with no Redis.

python -m bench.ours_direct --train train.jsonl --eval eval.jsonl --out DIR --result r.json --workload '{...}'
"""

import argparse
import json
import logging
import time
from pathlib import Path

from bench.workload import Workload, job_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--train", "--eval", "--out", "--result"):
        p.add_argument(name, type=Path, required=True)
    p.add_argument("--workload", type=json.loads, default="{}")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from app.spec.job import JobSpec
    from worker.training import recipe
    from worker.training.progress import LogReport

    w = Workload(**args.workload)
    spec = JobSpec.model_validate(job_spec(w, "train", "eval", checkpoint_every_steps=None))
    losses: list[float] = []

    class Recorder(LogReport):
        def train_point(self, point: dict) -> None:
            super().train_point(point)
            if point.get("loss") is not None:
                losses.append(point["loss"])

    started = time.monotonic()
    result = recipe.run(spec, args.train, args.out, Recorder(), validation_path=args.eval)
    figures = {
        "side": "ours",
        "tokens": result.train_tokens,
        "train_seconds": result.train_seconds,
        "train_cpu_seconds": result.train_cpu_seconds,
        "seconds_to_adapter": time.monotonic() - started,
        "peak_memory_bytes": result.peak_memory_bytes,
        "train_losses": losses,
        "trainer_eval_loss": result.eval_loss,
        "steps": result.steps,
        "adapter_dir": result.adapter_dir,
        "spec": spec.model_dump(mode="json"),
    }
    args.result.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

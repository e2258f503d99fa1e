"""What trackers are sent: the job's settings as flat parameters, and its metric points merged by step.

The points are GET /jobs/{id}/metrics's own (app/observability/metrics_service.curve, read from SQL), so a tracker
shows exactly the steps and values the API does: `train/<name>` for train points, `eval/<name>` for eval points
(`eval_loss` is `eval/loss`).
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.spec.job import JobSpec

PARAM_FIELDS = {"task", "base_model", "dataset", "validation_dataset", "method", "adapter", "lora", "quantization"}


@dataclass
class Step:
    step: int
    time: float  # seconds since the epoch, of the step's first point
    values: dict[str, float] = field(default_factory=dict)


def run_config(job_id: str, spec: JobSpec) -> dict[str, Any]:
    """The job's settings, nested (W&B's config): id, base model, data, method, adapter and training.

    Not the webhook URL, metadata or integrations (a URL may carry a token), nor format templates (long text)."""
    config = spec.model_dump(mode="json", include=PARAM_FIELDS | {"training"})
    return {"job_id": job_id, "name": spec.name, "format": {"type": spec.format.type}, **config}


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"training": {"max_steps": 4}}` as `{"training.max_steps": "4"}` (MLflow parameters are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def merged_steps(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[Step]:
    """Train and eval points as one list of steps in step order (W&B needs steps that never go back)."""
    steps: dict[int, Step] = {}
    for prefix, points in (("train/", train), ("eval/", evals)):
        for point in points:
            at = steps.setdefault(point["step"], Step(point["step"], _seconds(point.get("time"))))
            for key, value in point.items():
                if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                at.values[prefix + (key.removeprefix("eval_") if prefix == "eval/" else key)] = float(value)
    return [steps[s] for s in sorted(steps)]


def _seconds(iso: str | None) -> float:
    if not iso:
        return datetime.now().timestamp()
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

"""The training entry point: `run` hands a job to its task's recipe (causal_lm.py or classification.py).

Each recipe reads top to bottom: setup (data, model, adapter), train, save. No Celery, Redis or SQL here.
"""

from pathlib import Path

from app.spec.job import JobSpec
from worker.training import causal_lm, classification
from worker.training.progress import Report
from worker.training.result import TrainingResult


def run(
    spec: JobSpec,
    dataset_path: Path | None,
    out_dir: Path,
    report: Report | None = None,
    validation_path: Path | None = None,
    resume_from: Path | None = None,
) -> TrainingResult:
    """Fine-tune `spec.base_model` on the dataset and save the adapter under out_dir/adapter."""
    # classification: a head and labels instead of generated text
    recipe = classification if spec.task == "classification" else causal_lm
    return recipe.run(spec, dataset_path, out_dir, report, validation_path, resume_from)

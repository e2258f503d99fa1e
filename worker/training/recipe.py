"""The training entry point: `run` hands a job to its recipe (causal_lm.py, classification.py or preference.py).

Each recipe reads top to bottom: setup (data, model, adapter), train, save. No Celery, Redis or SQL here.
"""

from pathlib import Path

from app.spec.job import JobSpec
from worker.training import causal_lm, classification, preference
from worker.training.progress import Report
from worker.training.result import TrainingResult


def run(
    spec: JobSpec,
    dataset_path: Path | None,
    out_dir: Path,
    report: Report | None = None,
    validation_path: Path | None = None,
    resume_from: Path | None = None,
    init_adapter: Path | None = None,
) -> TrainingResult:
    """Fine-tune `spec.base_model` on the dataset and save the adapter under out_dir/adapter.

    `init_adapter`: the adapter directory of the job named in `spec.init_from`, trained on from where it stopped.
    """
    if spec.task == "classification":  # a head and labels instead of generated text
        return classification.run(spec, dataset_path, out_dir, report, validation_path, resume_from)
    if spec.method.type != "sft":  # pairs or labelled answers: TRL's preference trainers
        return preference.run(spec, dataset_path, out_dir, report, validation_path, resume_from, init_adapter)
    return causal_lm.run(spec, dataset_path, out_dir, report, validation_path, resume_from, init_adapter)

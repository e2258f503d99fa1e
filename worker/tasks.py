"""Celery tasks, kept thin: claim the job, run the recipe, record the outcome."""

import logging
import os
import shutil
import socket

from app import storage
from app.db import session_scope
from app.queue import TRAIN_TASK
from app.spec import JobSpec
from worker import record
from worker.artifacts import pack_directory
from worker.celery_app import app
from worker.report import JobReporter

# Imported here, in the worker's parent process, so each forked child starts a job without re-importing torch.
from worker.training import recipe
from worker.training.errors import Cancelled, TrainingError

log = logging.getLogger(__name__)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dataset_path(ref: object) -> "os.PathLike[str] | None":
    return storage.dataset_rows_path(ref) if isinstance(ref, str) else None


def _describe_failure(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, TrainingError):
        return exc.type, exc.message
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "out_of_memory", (
            "the GPU ran out of memory: lower training.batch_size (raise gradient_accumulation_steps to keep the "
            "effective batch), lower training.max_seq_length, or use 4-bit quantization"
        )
    first_line = (str(exc).splitlines() or [""])[0][:500]
    return (
        "internal_error",
        f"training failed unexpectedly ({type(exc).__name__}: {first_line}); see the worker log",
    )


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    """Train one job end to end; safe to run twice (only the first claim wins)."""
    worker = _worker_name()
    with session_scope() as session:
        job = record.claim_job(session, job_id, worker)
    if job is None:
        log.info("job %s is not queued (claimed elsewhere, cancelled or deleted): skipping", job_id)
        return "skipped"
    spec = JobSpec.model_validate(job.spec)
    out_dir = storage.job_dir(job_id)
    reporter = JobReporter(job_id, worker)
    reporter.status("running", attempt=job.attempts)
    log.info("job %s: training %s (attempt %d)", job_id, spec.base_model, job.attempts)
    status, error = "succeeded", None
    try:
        result = recipe.run(
            spec,
            _dataset_path(spec.dataset),
            out_dir,
            reporter,
            validation_path=_dataset_path(spec.validation_dataset),
        )
        size, sha = pack_directory(out_dir / "adapter", out_dir / "adapter.tar.gz")
    except Cancelled:
        status = "cancelled"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        status, error = "failed", _describe_failure(exc)
    finally:
        reporter.close()
        shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    with session_scope() as session:
        if status == "succeeded":
            record.add_artifact(
                session,
                job_id,
                name="adapter",
                kind="adapter",
                size_bytes=size,
                sha256=sha,
                path=storage.relative(out_dir / "adapter.tar.gz"),
                step=result.steps,
            )
        elif status == "failed" and record.job_status(session, job_id) == "cancelling":
            status, error = "cancelled", None
        record.finish_job(session, job_id, status, error)
    reporter.status(status, **({"error": {"type": error[0], "message": error[1]}} if error else {}))
    log.info("job %s: %s", job_id, status)
    return status

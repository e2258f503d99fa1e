"""Celery tasks, kept thin: the task names the job; worker/job_runner.py claims, runs and records it."""

from app.queue import TRAIN_TASK
from app.webhooks import notify_job_finished
from worker.celery_app import app

# Imported here, in the worker's parent process, so each forked child starts a job without re-importing torch.
from worker.job_runner import run_job, worker_name


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    """Train one job end to end; safe to run twice (only one claim wins)."""
    outcome = run_job(job_id, worker_name())
    notify_job_finished(job_id)  # queues the job's webhook if it ended; the API sends it, training never waits
    return outcome

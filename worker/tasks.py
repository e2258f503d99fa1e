"""Every Celery task the worker registers, kept thin: the task names its record; the bodies claim, run and record.

Training: worker/job_runner.py; predict, generate and evaluations: worker/inference.py; exports: worker/export.py;
/v1 completions on the embedded backend: worker/serving.py.
A message carries ids (and a call's request data) only; each body checks them first (worker/messages.py) and
returns "refused" for one that does not check out.
"""

from app.broker.tasks import EVALUATE_TASK, EXPORT_TASK, GENERATE_TASK, PREDICT_TASK, SERVE_TASK, TRAIN_TASK
from app.jobs.webhooks import notify_job_finished
from worker.celery_app import app
from worker.export import run_export
from worker.inference import run_evaluation, run_generation, run_prediction

# Imported here, in the worker's parent process, so each forked child starts a job without re-importing torch.
from worker.job_runner import run_job, worker_name
from worker.serving import run_serving


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    """Train one job end to end; safe to run twice (only one claim wins)."""
    outcome = run_job(job_id, worker_name())
    if outcome == "refused":
        return outcome  # not one of our job ids: nothing to notify
    notify_job_finished(job_id)  # queues the job's webhook if it ended; the API sends it, training never waits
    return outcome


@app.task(name=GENERATE_TASK, acks_late=False)  # someone waits for it: never redelivered hours later
def generate(call_id: str, job_id: str, request: dict) -> str:
    """Base and adapter outputs side by side for POST /jobs/{id}/generate; the answer goes to the call's record."""
    return run_generation(call_id, job_id, request)


@app.task(name=PREDICT_TASK, acks_late=False)  # a request someone waits for: never redelivered hours later
def predict(call_id: str, job_id: str, payload: dict) -> str:
    """Labels for POST /jobs/{id}/predict from a classification job's adapter; the answer goes to the call."""
    return run_prediction(call_id, job_id, payload)


@app.task(name=EXPORT_TASK)
def export(export_id: str) -> str:
    """A merged export (POST /jobs/{id}/exports); safe to run twice (only one claim wins)."""
    return run_export(export_id)


@app.task(name=EVALUATE_TASK)
def evaluate(evaluation_id: str) -> str:
    """An on-demand evaluation (POST /jobs/{id}/evaluations); safe to run twice (only one claim wins)."""
    return run_evaluation(evaluation_id)


@app.task(name=SERVE_TASK, acks_late=False)  # only a wake-up: the work waits in Redis, for this run or the next
def serve() -> str:
    """Drain the embedded backend's completion queue (app/broker/serving.py); extra wake-ups return at once."""
    return run_serving()

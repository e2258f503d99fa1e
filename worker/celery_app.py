"""The Celery app for GPU workers: settings for long training tasks (see docs/operations.md)."""

from celery import Celery, signals

from app.config import settings
from app.queue import celery_config
from worker.drain import clear_draining, mark_draining

app = Celery("finetune-worker", include=["worker.tasks"])
app.conf.update(celery_config())
app.conf.update(
    # Ack only after the job ends, and give the message back if the worker process dies mid-job;
    # the atomic claim in SQL keeps a redelivered message from starting a job twice.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One job at a time per GPU, and no prefetched job waiting behind a long one.
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    # A fresh child process per job releases all GPU memory between jobs.
    worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)


@signals.worker_init.connect
def _clear_stale_drain_flag(**_: object) -> None:
    clear_draining()


@signals.worker_shutting_down.connect
def _ask_running_jobs_to_checkpoint(**_: object) -> None:
    mark_draining()


@signals.worker_shutdown.connect
def _clear_drain_flag(**_: object) -> None:
    clear_draining()

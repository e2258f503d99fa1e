"""Celery wiring shared by the API and the workers; the API sends tasks by name, never importing worker code."""

import logging
from functools import cache
from typing import Any

from celery import Celery

from app.config import settings

TRAIN_TASK = "finetune.train"
log = logging.getLogger(__name__)


def celery_config() -> dict[str, Any]:
    """Settings both sides must agree on: JSON only, and a redelivery timeout longer than any job."""
    timeout = settings.visibility_timeout_s
    transport = {
        "visibility_timeout": timeout,
        # kombu sweeps for expired unacked messages every interval × throttle seconds (100 s by default):
        # scale the sweep to the timeout so a short timeout really redelivers within about a fifth of it.
        "unacked_restore_interval": max(1, min(10, timeout // 5)),
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.training_queue,
        "broker_connection_retry_on_startup": True,
    }


@cache
def celery_client() -> Celery:
    app = Celery("finetune-api")
    app.conf.update(celery_config())
    return app


def enqueue_training(job_id: str) -> bool:
    """Send the training task; False when the broker is unreachable (the job stays queued in SQL)."""
    try:
        celery_client().send_task(TRAIN_TASK, args=[job_id], queue=settings.training_queue, retry=False)
    except Exception:  # a broker outage must not lose the already-committed job
        log.exception("could not enqueue job %s; it stays queued and is re-sent by the reconciler", job_id)
        return False
    return True

"""Celery wiring shared by the API and the workers; the API sends tasks by name, never importing worker code.

Which queue a job goes to is app/fleet/routing.py; priorities ride on kombu's Redis priority lists.
"""

import logging
from functools import cache
from typing import Any

from celery import Celery
from sqlalchemy import select

from app.broker.tasks import TRAIN_TASK
from app.core import log_context
from app.core.config import settings
from app.fleet.routing import training_queue_for
from app.spec.job import Resources

PRIORITY_LEVELS = 10  # spec priority 0..9
log = logging.getLogger(__name__)


def celery_config() -> dict[str, Any]:
    """Settings both sides must agree on: JSON only, a redelivery timeout longer than any job, priority lists."""
    timeout = settings.visibility_timeout_s
    transport = {
        "visibility_timeout": timeout,
        # kombu sweeps for expired unacked messages every interval × throttle seconds (100 s by default):
        # scale the sweep to the timeout so a short timeout really redelivers within about a fifth of it.
        "unacked_restore_interval": max(1, min(10, timeout // 5)),
        "unacked_restore_throttle": 1,
        # One Redis list per priority level (`training`, `training:1` ... `training:9`); a worker's BRPOP names
        # the lists level by level, so a more urgent message in any of its queues comes out first.
        "priority_steps": list(range(PRIORITY_LEVELS)),
        "sep": ":",
        # Between queues of one level, the order the worker declared them (its most demanding queues first),
        # not round robin: a big machine takes the jobs only it can run before the ones anyone can.
        "queue_order_strategy": "priority",
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


def broker_priority(priority: int) -> int:
    """Spec priority (9 most urgent) -> kombu's Redis priority, where 0 is served first."""
    return PRIORITY_LEVELS - 1 - max(0, min(priority, PRIORITY_LEVELS - 1))


@cache
def celery_client() -> Celery:
    app = Celery("finetune-api")
    app.conf.update(celery_config())
    return app


def _route(job_id: str) -> tuple[str, int]:
    """The job's queue and spec priority, from its row (a re-send routes like the first send); read only."""
    from app.core.db import SessionLocal  # here, not at import: the worker's Celery app imports this module
    from app.models import Job

    with SessionLocal() as session:
        row = session.execute(select(Job.spec, Job.priority).where(Job.id == job_id)).first()
    if row is None:
        return settings.training_queue, 0  # gone: the worker's claim will refuse it anyway
    spec, priority = row
    return training_queue_for(Resources.model_validate(spec.get("resources") or {})), priority or 0


def enqueue_training(job_id: str, route: tuple[str, int] | None = None) -> bool:
    """Send the training task to the job's queue at its priority; False when the broker is unreachable (the job
    stays queued in SQL and the reconciler re-sends it). `route`: the (queue, spec priority) the caller already
    read from the job's row, which spares a query per job when many are sent."""
    log_context.bind(job_id=job_id)  # the rest of the request's lines, its access line too, name the job
    try:
        queue, priority = route or _route(job_id)
        celery_client().send_task(
            TRAIN_TASK, args=[job_id], queue=queue, priority=broker_priority(priority), retry=False
        )
        log.info("job %s sent to queue %s", job_id, queue, extra={"job_id": job_id})
    except Exception:  # a broker outage must not lose the already-committed job
        log.exception("could not enqueue job %s; it stays queued and is re-sent by the reconciler", job_id)
        return False
    return True


def broker_queue_length(client: Any, queue: str | None = None) -> int:
    """Messages waiting in a queue (default: the plain training queue) over all its priority lists."""
    name = queue or settings.training_queue
    return sum(int(client.llen(name if level == 0 else f"{name}:{level}")) for level in range(PRIORITY_LEVELS))

"""Celery wiring shared by the API and the workers; the API sends tasks by name, never importing worker code.

Routing (docs/operations.md, Fleet): a job that needs nothing special goes to FT_TRAINING_QUEUE, which every
worker consumes. One that needs several GPUs on one machine or a GPU memory floor goes to
`{FT_TRAINING_QUEUE}.g{gpus}[.m{tier}]`, where the tier is the smallest GPU memory of the fleet that is enough;
a worker consumes every such queue it can serve. Priorities ride on kombu's Redis priority lists.
"""

import logging
from functools import cache
from typing import Any

from celery import Celery
from sqlalchemy import select

from app.broker.tasks import TRAIN_TASK
from app.core.config import settings
from app.fleet.gpu_classes import KNOWN, Machine, fleet, parse_fleet
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


def memory_tiers() -> tuple[float, ...]:
    """The GPU memory sizes (GiB) a job's memory floor is rounded up to: FT_FLEET_GPUS's, else every known class's.

    The API and the workers must see the same FT_FLEET_GPUS for their queue names to meet.
    """
    classes = parse_fleet(settings.fleet_gpus) if settings.fleet_gpus.strip() else KNOWN
    return tuple(sorted({c.memory_gib for c in classes if c.memory_gib is not None}))


def _queue_name(gpus: int, tier: float | None) -> str:
    name = f"{settings.training_queue}.g{gpus}"
    return name if tier is None else f"{name}.m{tier:g}"


def training_queue_for(resources: Resources) -> str:
    """The queue of a job needing `resources`: the plain training queue when any worker will do."""
    memory = resources.min_gpu_memory_gb
    if resources.gpus == 1 and memory is None:
        return settings.training_queue
    tier = None if memory is None else next((t for t in memory_tiers() if t >= memory), memory)
    return _queue_name(resources.gpus, tier)


def worker_queues(gpus: int, memory_gib: float | None) -> list[str]:
    """Every training queue a worker with `gpus` GPUs of `memory_gib` GiB each (None: no GPU) can serve, the most
    demanding first; the plain training queue last."""
    tiers = sorted({t for t in (*memory_tiers(), memory_gib) if t <= memory_gib}, reverse=True) if memory_gib else []
    queues = []
    for n in range(gpus, 0, -1):
        queues += [_queue_name(n, t) for t in tiers]
        if n > 1:
            queues.append(_queue_name(n, None))
    return [*queues, settings.training_queue]


def _fits(machine: Machine, resources: Resources) -> bool:
    memory = resources.min_gpu_memory_gb
    return machine.gpus >= resources.gpus and (memory is None or (machine.gpu.memory_gib or 0) >= memory)


def fleet_refusal(resources: Resources) -> tuple[str, str] | None:
    """(field, why) no machine of the declared fleet (FT_FLEET_GPUS) could ever run a job needing `resources`; None
    when one can, or when the fleet is not declared (then the job waits for a worker that has what it asks)."""
    machines = fleet().machines
    if not machines or any(_fits(m, resources) for m in machines):
        return None
    memory = resources.min_gpu_memory_gb
    asked = f"{resources.gpus} GPU(s) on one machine" + (f" with at least {memory:g} GiB each" if memory else "")
    has = ", ".join(m.describe() + (f" ({m.gpu.memory_gib:g} GiB)" if m.gpu.memory_gib else "") for m in machines)
    big_enough = [m for m in machines if memory is None or (m.gpu.memory_gib or 0) >= memory]
    if not big_enough:
        field, largest = "resources.min_gpu_memory_gb", max(m.gpu.memory_gib or 0 for m in machines)
        fix = f"lower {field} to at most {largest:g}" if largest else f"remove {field} (the fleet has no GPU)"
    else:
        field = "resources.gpus"
        fix = f"lower {field} to at most {max(m.gpus for m in big_enough)}"
    return field, (
        f"{field}: no machine in the fleet can run this job: it asks for {asked}, and the fleet declared in "
        f"FT_FLEET_GPUS={settings.fleet_gpus!r} has {has}; {fix}, or add such machines and declare them there"
    )


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


def enqueue_training(job_id: str) -> bool:
    """Send the training task to the job's queue at its priority; False when the broker is unreachable (the job
    stays queued in SQL and the reconciler re-sends it)."""
    try:
        queue, priority = _route(job_id)
        celery_client().send_task(
            TRAIN_TASK, args=[job_id], queue=queue, priority=broker_priority(priority), retry=False
        )
    except Exception:  # a broker outage must not lose the already-committed job
        log.exception("could not enqueue job %s; it stays queued and is re-sent by the reconciler", job_id)
        return False
    return True


def broker_queue_length(client: Any, queue: str | None = None) -> int:
    """Messages waiting in a queue (default: the plain training queue) over all its priority lists."""
    name = queue or settings.training_queue
    return sum(int(client.llen(name if level == 0 else f"{name}:{level}")) for level in range(PRIORITY_LEVELS))

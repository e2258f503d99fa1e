"""Routing by resources (docs/operations.md, Fleet): which training queue a job goes to, which queues a worker serves.

A job that needs nothing special goes to FT_TRAINING_QUEUE, which every worker consumes. One that needs several
GPUs on one machine or a GPU memory floor goes to `{FT_TRAINING_QUEUE}.g{gpus}[.m{tier}]`, where the tier is the
smallest GPU memory of the fleet that is enough; a worker consumes every such queue it can serve.
"""

from app.core.config import settings
from app.fleet.gpu_classes import KNOWN, Machine, fleet, parse_fleet
from app.spec.job import Resources


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

"""Graceful shutdown: the Celery parent marks itself draining; its pool child sees it at the next step.

Celery's warm shutdown (SIGTERM) waits for running tasks to finish, which for a training job can be hours.
Instead the parent drops a flag file named after its pid; the job checkpoints, requeues itself and returns.
"""

import os
import tempfile
from pathlib import Path


def drain_flag(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"finetune-drain-{pid}"


def mark_draining(pid: int | None = None) -> None:
    drain_flag(pid or os.getpid()).touch()


def clear_draining(pid: int | None = None) -> None:
    drain_flag(pid or os.getpid()).unlink(missing_ok=True)


def is_draining() -> bool:
    """True when this process's worker (its parent in the prefork pool, or itself when solo) is shutting down.

    A rank of a multi-process job (worker/distributed.py) watches the pids in FT_DRAIN_PIDS instead:
    the task process that started torchrun and that task's Celery parent."""
    pids = [os.getppid(), os.getpid()]
    pids += [int(p) for p in os.environ.get("FT_DRAIN_PIDS", "").split(",") if p.strip().isdigit()]
    return any(drain_flag(pid).exists() for pid in pids)

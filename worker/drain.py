"""Graceful shutdown: the Celery parent marks itself draining; its pool child sees it at the next step.

Celery's warm shutdown (SIGTERM) waits for running tasks to finish, which for a training job can be hours.
Instead the parent drops a flag file named after its process; the job checkpoints, requeues itself and returns.

A flag names the process by its pid *and* its start time: a worker killed outright (SIGKILL, OOM killer) never
clears its flag, and a pid comes round again, so a flag named by pid alone would drain whichever later process
drew that pid (a job requeued at its first step for no reason).
"""

import functools
import os
import tempfile
from pathlib import Path

PREFIX = "finetune-drain-"


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), or "" where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of proc(5); the name in () may hold spaces


def drain_flag(pid: int) -> Path:
    started = _started(pid)
    return Path(tempfile.gettempdir()) / f"{PREFIX}{pid}{'-' + started if started else ''}"


def mark_draining(pid: int | None = None) -> None:
    drain_flag(pid or os.getpid()).touch()


def clear_draining(pid: int | None = None) -> None:
    drain_flag(pid or os.getpid()).unlink(missing_ok=True)


def clear_stale_flags() -> None:
    """Remove the flags of processes that are gone (workers killed before they could clear their own)."""
    for flag in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = flag.name.removeprefix(PREFIX).split("-")[0]
        if pid.isdigit() and flag != drain_flag(int(pid)):
            flag.unlink(missing_ok=True)


def is_draining() -> bool:
    """True when this process's worker (its parent in the prefork pool, or itself when solo) is shutting down.

    A rank of a multi-process job (worker/distributed.py) watches the pids in FT_DRAIN_PIDS instead:
    the task process that started torchrun and that task's Celery parent."""
    pids = [os.getppid(), os.getpid()]
    pids += [int(p) for p in os.environ.get("FT_DRAIN_PIDS", "").split(",") if p.strip().isdigit()]
    return any(flag.exists() for flag in _watched_flags(tuple(pids)))


@functools.lru_cache(maxsize=8)
def _watched_flags(pids: tuple[int, ...]) -> tuple[Path, ...]:
    """The flags `is_draining` looks for, named once: it runs at every training step, and a live process's start
    time never changes (a reparented child asks with other pids)."""
    return tuple(drain_flag(pid) for pid in pids)

"""The Celery app for GPU workers: settings for long training tasks (see docs/operations.md)."""

import glob
import logging
import subprocess
import sys

from celery import Celery, signals
from kombu import Exchange, Queue

from app.broker.queue import celery_config
from app.core.config import settings
from app.fleet.routing import worker_queues
from worker.drain import clear_draining, mark_draining

log = logging.getLogger(__name__)
# Run in a child process: initialising CUDA here would leave the forked pool children unable to use it.
_CUDA_PROBE = (
    "import torch\n"
    "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
    "print(n, min((torch.cuda.get_device_properties(i).total_memory for i in range(n)), default=0) / 2**30)"
)


def detected_gpus() -> tuple[int, float | None]:
    """(count, GiB of the smallest) of the CUDA GPUs torch sees on this machine; (0, None) without any."""
    if not glob.glob("/dev/nvidia[0-9]*"):  # no NVIDIA device node: skip importing torch just to hear "none"
        return 0, None
    try:
        out = subprocess.run([sys.executable, "-c", _CUDA_PROBE], capture_output=True, text=True, timeout=300)
        count, memory = out.stdout.split()[-2:]
        return int(count), (float(memory) or None)
    except (OSError, ValueError, subprocess.SubprocessError):
        log.warning("could not ask torch about CUDA GPUs: assuming none; set FT_WORKER_GPUS, FT_WORKER_GPU_MEMORY_GB")
        return 0, None


def declared_resources() -> tuple[int, float | None]:
    """What this worker offers: FT_WORKER_GPUS (else the CUDA GPUs, else 1 CPU slot) and FT_WORKER_GPU_MEMORY_GB
    (else the GPUs' memory; 0 or no GPU: None, which serves no GPU memory floor)."""
    gpus, memory = settings.worker_gpus, settings.worker_gpu_memory_gb
    if gpus is None or memory is None:
        found, found_memory = detected_gpus()
        gpus = gpus if gpus is not None else max(found, 1)
        memory = memory if memory is not None else found_memory
    return gpus, (memory or None)


def training_queues() -> list[Queue]:
    """The queues a worker started without -Q consumes: every job this machine can run (app/broker/queue.py)."""
    # Each bound as Celery binds a queue it creates on the fly (the API's send_task does): exchange and key = name.
    return [Queue(name, Exchange(name), routing_key=name) for name in worker_queues(*declared_resources())]


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
    # Without -Q the worker consumes these, most demanding first; an explicit -Q picks from them (or names others).
    task_queues=training_queues(),
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

"""The Celery app for GPU workers: settings for long training tasks (see docs/operations.md)."""

import glob
import logging
import subprocess
import sys
from contextvars import Token

from celery import Celery, signals
from kombu import Exchange, Queue

from app import storage
from app.broker.queue import celery_config
from app.broker.tasks import REQUEST_ID_HEADER
from app.core import log_context
from app.core.config import settings
from app.fleet.routing import worker_queues
from app.observability import logs, request_ids, tracing
from worker.drain import clear_draining, clear_stale_flags, mark_draining

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
    # A Redis outage is ridden out (docs/operations.md "Outages"): the consumer reconnects for as long as it takes,
    # and the running job trains on (cancelling it, Celery 6's default, would rerun it from its last checkpoint).
    broker_connection_retry=True,
    broker_connection_max_retries=None,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_hijack_root_logger=False,
    # What training libraries print (the Trainer's loss dicts) is logged, in our format, at INFO, not WARNING.
    worker_redirect_stdouts_level="INFO",
    # Without -Q the worker consumes these, most demanding first; an explicit -Q picks from them (or names others).
    task_queues=training_queues(),
)


@signals.worker_init.connect
def _clear_stale_drain_flag(**_: object) -> None:
    clear_draining()
    clear_stale_flags()


@signals.worker_shutting_down.connect
def _ask_running_jobs_to_checkpoint(**_: object) -> None:
    mark_draining()


@signals.worker_shutdown.connect
def _clear_drain_flag(**_: object) -> None:
    clear_draining()


# --- logs and traces: every line with the task's ids, one trace from the API's request into training ---


@signals.setup_logging.connect
def _configure_logging(**_: object) -> None:
    """Celery leaves logging to us when this signal has a receiver: FT_LOG_FORMAT and FT_LOG_LEVEL (which wins over
    --loglevel), for Celery's own lines as for ours (app/observability/logs.py)."""
    logs.configure_logging("worker")
    logging.captureWarnings(True)  # transformers' and torch's warnings as log lines with the job's ids


request_ids.carry_request_ids()  # a requeued job's message keeps the request id of the POST that made it


@signals.worker_process_init.connect
def _start_tracing(**_: object) -> None:
    """In each process that runs tasks (prefork children, or the solo worker itself), never in the prefork parent:
    its spans would only be the broker's polling. Off unless OTEL_* asks for traces (app/observability/tracing.py)."""
    tracing.configure("finetune-worker")
    logs.adopt("transformers")  # loaded with the tasks, after logging was set up: its own handler would print twice


_task_scopes: dict[str, Token] = {}


@signals.task_prerun.connect
def _open_log_scope(task_id: str, task: object, args: tuple = (), **_: object) -> None:
    """The task's log fields: the request id its message carries and the job it names, both checked (a message
    is untrusted: worker/messages.py); the tenant and attempt are bound once the job is claimed from SQL."""
    header = getattr(getattr(task, "request", None), REQUEST_ID_HEADER, None)
    job_id = next(
        (a for a in args if isinstance(a, str) and a.startswith("job_") and storage.SAFE_ID.fullmatch(a)), None
    )
    _task_scopes[task_id] = log_context.open_scope(
        request_id=request_ids.accepted_request_id(header), job_id=job_id, task=getattr(task, "name", None)
    )


@signals.task_postrun.connect
def _close_log_scope(task_id: str, **_: object) -> None:
    token = _task_scopes.pop(task_id, None)
    if token is not None:
        log_context.close_scope(token)

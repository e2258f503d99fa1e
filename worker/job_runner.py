"""One attempt at a job: claim it, resume from its last checkpoint, train, and record exactly one outcome."""

import logging
import os
import shutil
import signal
import socket
import threading
from pathlib import Path

from pydantic import ValidationError

from app import storage
from app.broker.queue import enqueue_training
from app.checks.init_from import init_artifact
from app.core.db import session_scope
from app.datasets.tenant_access import acting_for_job
from app.spec.job import JobSpec
from app.tenants import limits
from worker import distributed, frame_stack, messages, model_card, record
from worker.artifacts import pack_directory
from worker.drain import clear_draining, mark_draining
from worker.oom import is_out_of_memory, smaller_micro_batch
from worker.report import JobReporter
from worker.resume import discard_resumable, latest_resumable
from worker.training import model as modelling
from worker.training import recipe
from worker.training.errors import Cancelled, Drained, TrainingError
from worker.training.result import TrainingResult

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dataset_path(ref: object) -> "os.PathLike[str] | None":
    return storage.cached_dataset(ref) if isinstance(ref, str) else None  # fetched from the store when not here


def _describe_failure(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, TrainingError):
        return exc.type, exc.message
    first_line = (str(exc).splitlines() or [""])[0][:500]
    return "internal_error", f"training failed unexpectedly ({type(exc).__name__}: {first_line}); see the worker log"


def _requeue(job_id: str, reporter: JobReporter, reason: str) -> str:
    with session_scope() as session:
        record.requeue_job(session, job_id)
    reporter.status("queued", reason=reason)
    if enqueue_training(job_id):
        with session_scope() as session:
            record.mark_enqueued(session, job_id)
    return "requeued"


def _drain_on_sigterm() -> None:
    """SIGTERM straight to this process (systemd, `kill` of the group) asks for a checkpoint, not death."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: mark_draining(os.getpid()))


def run_job(job_id: str, worker: str) -> str:
    """Run one attempt; returns what became of it (succeeded, failed, cancelled, requeued, skipped, refused)."""
    try:
        messages.checked_id(job_id, "job")  # the message is only a job id; all else is read from SQL by it
    except messages.Refused as exc:
        return messages.refuse("training", exc)
    _drain_on_sigterm()
    try:
        return frame_stack.call(_attempt, job_id, worker)  # one roomy frame-stack chunk: see worker/frame_stack.py
    finally:
        clear_draining(os.getpid())


def _attempt(job_id: str, worker: str) -> str:
    with session_scope() as session:
        if limits.defer_if_tenant_busy(session, job_id):  # its tenant runs all it may: the reconciler re-sends it
            return "deferred"
        job = record.claim_job(session, job_id, worker)
    if job is None:
        log.info("job %s is not claimable (running elsewhere, finished, cancelled or deleted): skipping", job_id)
        return "skipped"
    try:
        spec = JobSpec.model_validate(job.spec)  # as stored in SQL, checked again: never run an unchecked spec
    except ValidationError as exc:
        reporter = JobReporter(job_id, worker)
        reporter.close()
        message = f"the job's stored spec does not validate ({messages.first_error(exc)}): submit it again"
        return _finish(job_id, reporter, "failed", ("invalid_spec", message))
    out_dir = storage.job_dir(job_id)
    resume = latest_resumable(job_id, out_dir / "trainer")  # this machine's, else the store's (worker/resume.py)
    with session_scope() as session:
        record.drop_points_after(session, job_id, resume[0] if resume else 0)
        record.set_lineage(session, job_id, spec, modelling.device_type())
    reporter = JobReporter(job_id, worker)
    reporter.status("running", attempt=job.attempts, resumed_from_step=resume[0] if resume else None)
    log.info(
        "job %s: attempt %d on %s%s",
        job_id,
        job.attempts,
        spec.base_model,
        f", resuming from step {resume[0]}" if resume else "",
    )
    try:
        # _train closes the reporter however it ends: every point is in SQL before anything below reads them
        result = _train(job_id, worker, spec, out_dir, reporter, resume[1] if resume else None)
        model_card.document_adapter(job_id, spec, result)
        size, sha = pack_directory(out_dir / "adapter", out_dir / "adapter.tar.gz")
        storage.publish(out_dir / "adapter.tar.gz")
    except Drained as stop:
        return _requeue(job_id, reporter, f"worker shutting down; checkpoint saved at step {stop.step}")
    except Exception as exc:
        if is_out_of_memory(exc):
            return _handle_out_of_memory(job_id, spec, reporter)
        if isinstance(exc, Cancelled):
            if reporter.lease_lost and _job_exists(job_id):
                return "lease lost"  # another worker owns the job now; this copy records nothing
            return _finish(job_id, reporter, "cancelled")
        log.exception("job %s failed", job_id)
        return _finish(job_id, reporter, "failed", _describe_failure(exc))
    with session_scope() as session:
        record.add_artifact(
            session,
            job_id,
            name="adapter",
            kind="adapter",
            size_bytes=size,
            sha256=sha,
            path=storage.relative(out_dir / "adapter.tar.gz"),
            step=result.steps,
        )
    return _finish(job_id, reporter, "succeeded")


def _init_adapter(spec: JobSpec, out_dir: Path) -> Path | None:
    """The adapter `init_from` names, unpacked under out_dir/init (from the store when it is not on this disk)."""
    if spec.init_from is None:
        return None
    with session_scope() as session:
        artifact = init_artifact(session, spec.init_from.job, spec.init_from.checkpoint_step)
        key = artifact.path if artifact is not None else None
    if key is None:
        raise TrainingError("invalid_spec", f"init_from: job {spec.init_from.job} has no such adapter any more")
    return storage.unpack(storage.cached(key), out_dir / "init")


def _train(
    job_id: str,
    worker: str,
    spec: JobSpec,
    out_dir: Path,
    reporter: JobReporter,
    resume_from: Path | None,
) -> TrainingResult:
    """In this process, or across `resources.gpus` processes with torchrun (worker/distributed.py).

    However training ends, the reporter is closed on the way out: every point is in SQL before the model card
    plots them, and before the attempt's outcome is recorded (which reads `reporter.lease_lost`).
    """
    try:
        init_adapter = _init_adapter(spec, out_dir)
        if distributed.world_size(spec) > 1:
            if init_adapter is not None:
                raise TrainingError("invalid_spec", "init_from trains on one GPU for now: set resources.gpus to 1")
            return distributed.run(
                spec,
                _dataset_path(spec.dataset),
                out_dir,
                job_id,
                worker,
                validation_path=_dataset_path(spec.validation_dataset),
                resume_from=resume_from,
            )
        with acting_for_job(job_id):  # Hub reads as the job's tenant: its allow-lists and its token
            return recipe.run(
                spec,
                _dataset_path(spec.dataset),
                out_dir,
                reporter,
                validation_path=_dataset_path(spec.validation_dataset),
                resume_from=resume_from,
                init_adapter=init_adapter,
            )
    finally:
        reporter.close()


def _handle_out_of_memory(job_id: str, spec: JobSpec, reporter: JobReporter) -> str:
    smaller = smaller_micro_batch(spec.training)
    if smaller is None:
        return _finish(
            job_id,
            reporter,
            "failed",
            (
                "out_of_memory",
                (
                    "the GPU ran out of memory even with a micro-batch of 1: lower training.max_seq_length, use 4-bit "
                    "quantization, a smaller lora.r, or a GPU with more memory"
                ),
            ),
        )
    message = (
        f"out of GPU memory at micro-batch {spec.training.batch_size}: retrying with batch_size "
        f"{smaller.batch_size} and gradient_accumulation_steps {smaller.gradient_accumulation_steps} "
        "(same effective batch)"
    )
    log.warning("job %s: %s", job_id, message)
    reporter.warning(message)
    with session_scope() as session:
        record.update_spec(session, job_id, spec.model_copy(update={"training": smaller}).model_dump(mode="json"))
    return _requeue(job_id, reporter, "out of memory; smaller micro-batch")


def _job_exists(job_id: str) -> bool:
    with session_scope() as session:
        return record.job_status(session, job_id) is not None


def _finish(job_id: str, reporter: JobReporter, status: str, error: tuple[str, str] | None = None) -> str:
    with session_scope() as session:
        if status == "failed" and record.job_status(session, job_id) == "cancelling":
            status, error = "cancelled", None
        record.finish_job(session, job_id, status, error)
        discard = record.discard_deleted_outputs(session, job_id)
    # Resumable state (optimizer, RNG) is only useful until the job ends; packed checkpoints stay.
    discard_resumable(job_id, storage.job_dir(job_id) / "trainer")
    if discard:  # deleted while it ran (DELETE /jobs/{id}): what this attempt wrote since goes too
        storage.remove(storage.job_prefix(job_id))
        shutil.rmtree(storage.job_dir(job_id), ignore_errors=True)
        if not _job_exists(job_id):
            log.info("job %s: deleted while it ran; its files are removed", job_id)
            return "deleted"
    reporter.status(status, **({"error": {"type": error[0], "message": error[1]}} if error else {}))
    log.info("job %s: %s", job_id, status)
    return status

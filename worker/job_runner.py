"""One attempt at a job: claim it, resume from its last checkpoint, train, and record exactly one outcome."""

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app import storage
from app.checks.init_from import init_artifact
from app.core import log_context
from app.core.db import session_scope
from app.datasets.tenant_access import acting_for_job
from app.models import Job
from app.observability import tracing
from app.spec.job import JobSpec
from app.tenants import limits
from worker import disk, distributed, frame_stack, messages, model_card, outcome, record
from worker.artifacts import pack_directory
from worker.drain import clear_draining, mark_draining
from worker.lease import Lease, LeaseLost, renew_and, ride_out
from worker.observed_report import ObservedReport
from worker.oom import is_out_of_memory, smaller_micro_batch
from worker.report import JobReporter
from worker.resume import latest_resumable
from worker.trackers import JobTrackers
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
    def claim(session: Session) -> Job | None | str:
        if limits.defer_if_tenant_busy(session, job_id):  # its tenant runs all it may: the reconciler re-sends it
            return "deferred"
        return record.claim_job(session, job_id, worker)

    # The claim waits out a short database outage too, as long as a lease would, holding its unacknowledged message.
    job = ride_out(Lease(job_id, worker), "claiming the job", claim)
    if job == "deferred":
        return "deferred"
    if not isinstance(job, Job):
        log.info("job %s is not claimable (running elsewhere, finished, cancelled or deleted): skipping", job_id)
        return "skipped"
    log_context.bind(tenant=job.tenant, attempt=job.attempts)  # on this attempt's log lines from here on
    # From the claim on, the reporter renews the lease (through a long resume download too), and each SQL write
    # rides out a short database outage (worker/lease.py); a lease lost ends the attempt, recording nothing.
    reporter = JobReporter(job_id, worker)
    try:
        return _start_attempt(job, reporter)
    except LeaseLost as exc:
        return outcome.lease_lost(job_id, reporter, exc)
    finally:
        reporter.end()


def _start_attempt(job: Job, reporter: JobReporter) -> str:
    """Check the spec, find the checkpoint to resume from, reset the record to it, then train and record."""
    job_id, worker = job.id, reporter.worker
    try:
        spec = JobSpec.model_validate(job.spec)  # as stored in SQL, checked again: never run an unchecked spec
    except ValidationError as exc:
        message = f"the job's stored spec does not validate ({messages.first_error(exc)}): submit it again"
        return outcome.finish(job_id, reporter, "failed", ("invalid_spec", message))
    out_dir = storage.job_dir(job_id)
    resume = latest_resumable(job_id, out_dir / "trainer")  # this machine's, else the store's (worker/resume.py)

    def reset_record(session: Session) -> None:
        record.drop_points_after(session, job_id, resume[0] if resume else 0)
        record.set_lineage(session, job_id, spec, modelling.device_type())

    ride_out(reporter.lease, "starting the attempt", renew_and(reporter.lease, reset_record))
    reporter.status("running", attempt=job.attempts, resumed_from_step=resume[0] if resume else None)
    log.info(
        "job %s: attempt %d on %s%s",
        job_id,
        job.attempts,
        spec.base_model,
        f", resuming from step {resume[0]}" if resume else "",
    )
    # The job's MLflow / W&B runs follow the attempt and end with its recorded status (docs/trackers.md)
    with JobTrackers(job_id, spec, reporter.warning, resume[0] if resume else None) as trackers:
        return _train_and_record(job_id, worker, job, spec, out_dir, reporter, resume, trackers.wait_opened)


def _train_and_record(
    job_id: str,
    worker: str,
    job: Job,
    spec: JobSpec,
    out_dir: Path,
    reporter: JobReporter,
    resume: tuple[int, Path] | None,
    trackers_opened: Callable[[], None],
) -> str:
    """Train, pack and publish the adapter, and record exactly one outcome."""
    try:
        # _train closes the reporter however it ends: every point is in SQL before anything below reads them
        with tracing.span(
            "training", {"ft.job_id": job_id, "ft.attempt": job.attempts, "ft.base_model": spec.base_model}
        ):
            try:
                result = _train(job_id, worker, spec, out_dir, ObservedReport(reporter), resume[1] if resume else None)
            finally:
                trackers_opened()  # a tracker's warning goes out before the outcome's status event ends the streams
        if reporter.lease_lost:
            raise reporter.lease_error()
        with tracing.span("save", {"ft.job_id": job_id}):
            ride_out(
                reporter.lease, "writing the model card", lambda _: model_card.document_adapter(job_id, spec, result)
            )
            size, sha = pack_directory(out_dir / "adapter", out_dir / "adapter.tar.gz")
            storage.publish(out_dir / "adapter.tar.gz")  # S3: retried through an outage (app/storage/s3.py)
    except Drained as stop:
        return outcome.requeue(job_id, reporter, f"worker shutting down; checkpoint saved at step {stop.step}")
    except Exception as exc:
        return _failed(job_id, spec, out_dir, reporter, exc)
    adapter = {"kind": "adapter", "size_bytes": size, "sha256": sha, "step": result.steps}
    adapter["path"] = storage.relative(out_dir / "adapter.tar.gz")
    ride_out(
        reporter.lease,
        "recording the adapter",
        renew_and(reporter.lease, lambda s: record.add_artifact(s, job_id, name="adapter", **adapter)),
    )
    return outcome.finish(job_id, reporter, "succeeded")


def _failed(job_id: str, spec: JobSpec, out_dir: Path, reporter: JobReporter, exc: Exception) -> str:
    """Record how training or saving ended when it raised: the lease lost, out of memory, cancelled, a full disk."""
    if isinstance(exc, LeaseLost):
        raise exc
    if reporter.lease_lost:  # it stopped training (Cancelled) because the job may be another worker's now
        raise reporter.lease_error() from exc
    if is_out_of_memory(exc):
        return _handle_out_of_memory(job_id, spec, reporter)
    if isinstance(exc, Cancelled):
        return outcome.finish(job_id, reporter, "cancelled")
    if (full := disk.full_disk_error(exc, out_dir)) is not None:
        removed = ", ".join(str(path.relative_to(out_dir)) for path in disk.remove_partial_outputs(out_dir))
        log.error("job %s: %s (removed what it left half-written: %s)", job_id, full.message, removed or "nothing")
        return outcome.finish(job_id, reporter, "failed", (full.type, full.message))
    log.exception("job %s failed", job_id, exc_info=exc)
    return outcome.finish(job_id, reporter, "failed", _describe_failure(exc))


def _init_adapter(spec: JobSpec, out_dir: Path) -> Path | None:
    """The adapter `init_from` names, unpacked under out_dir/init (from the store when it is not on this disk)."""
    if spec.init_from is None or spec.init_from.hub is not None:
        return None  # none, or a Hub adapter: the recipe reads it as the job's tenant (worker/training/adapters.py)
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
            if spec.init_from is not None:
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
        return outcome.finish(
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
    smaller_spec = spec.model_copy(update={"training": smaller}).model_dump(mode="json")
    ride_out(reporter.lease, "halving the micro-batch", lambda s: record.update_spec(s, job_id, smaller_spec))
    return outcome.requeue(job_id, reporter, "out of memory; smaller micro-batch")

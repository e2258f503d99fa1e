"""Merged export (POST /jobs/{id}/exports): claim it, merge (worker/training/merge.py), pack and record it.

The result is a loadable model directory: the adapter merged into an unquantized copy of the base.
"""

import logging
import shutil

from sqlalchemy import update

from app import storage
from app.core.db import SessionLocal, session_scope
from app.datasets.tenant_access import acting_for_job
from app.inference.reaper import heartbeat
from app.models import Export, utcnow
from app.spec.job import JobSpec
from worker import messages, record
from worker.artifacts import pack_directory
from worker.training.errors import TrainingError
from worker.training.merge import merge_adapter

log = logging.getLogger(__name__)


def _claim(export_id: str) -> tuple[str, JobSpec] | None:
    with session_scope() as session:
        claimed = record.claim_queued_request(session, Export, export_id)
        if claimed is None:
            return None
        _export, job = claimed
        return job.id, JobSpec.model_validate(job.spec)


def _finish(export_id: str, status: str, message: str | None = None) -> None:
    with session_scope() as session:
        session.execute(
            update(Export)
            .where(Export.id == export_id)
            .values(status=status, error_message=message, finished_at=utcnow())
        )


def run_export(export_id: str) -> str:
    """Claim a queued export, merge, pack as the `merged` artifact; returns the export's final status."""
    try:
        messages.checked_id(export_id, "exp")
    except messages.Refused as exc:
        return messages.refuse("export", exc)
    claimed = _claim(export_id)
    if claimed is None:
        return "skipped"  # a redelivered message, or an export already done
    job_id, spec = claimed
    job_dir = storage.job_dir(job_id)
    try:
        # A worker that dies here is reaped by the API; the base model is read as the job's tenant.
        with heartbeat(SessionLocal, Export, export_id), acting_for_job(job_id):
            merged = merge_adapter(spec, storage.local_adapter_dir(job_id), job_dir / "merged")
            size, sha = pack_directory(merged, job_dir / "merged.tar.gz")
            storage.publish(job_dir / "merged.tar.gz")
    except TrainingError as exc:
        _finish(export_id, "failed", exc.message)
        return "failed"
    except Exception as exc:
        log.exception("export %s failed", export_id)
        _finish(export_id, "failed", f"the merge failed ({type(exc).__name__}: {str(exc)[:300]}); see the worker log")
        return "failed"
    shutil.rmtree(merged, ignore_errors=True)  # the .tar.gz is what is served
    with session_scope() as session:
        record.add_artifact(
            session,
            job_id,
            name="merged",
            kind="merged",
            size_bytes=size,
            sha256=sha,
            path=storage.relative(job_dir / "merged.tar.gz"),
            step=None,
        )
    _finish(export_id, "succeeded")
    return "succeeded"

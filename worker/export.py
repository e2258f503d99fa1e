"""Exports (POST /jobs/{id}/exports): claim one, then merge and pack it (`merged`) or publish it (`hub`), and record.

A merged export is a loadable model directory: the adapter merged into an unquantized copy of the base
(worker/training/merge.py). A Hub export commits the adapter, or the merged model, to a Hugging Face Hub repo with
the tenant's Hub token (worker/hub_publish.py).
"""

import logging
import shutil
from dataclasses import asdict
from typing import Any

from sqlalchemy import update

from app import storage
from app.core.db import SessionLocal, session_scope
from app.datasets.tenant_access import acting_for_job
from app.inference.reaper import heartbeat
from app.models import Export, utcnow
from app.spec.job import JobSpec
from worker import hub_publish, messages, record
from worker.artifacts import pack_directory
from worker.training.errors import TrainingError
from worker.training.merge import merge_adapter

log = logging.getLogger(__name__)


def _claim(export_id: str) -> tuple[str, str, JobSpec, dict[str, Any]] | None:
    with session_scope() as session:
        claimed = record.claim_queued_request(session, Export, export_id)
        if claimed is None:
            return None
        export, job = claimed
        return job.id, export.kind, JobSpec.model_validate(job.spec), dict(export.options or {})


def _finish(export_id: str, status: str, message: str | None = None, result: dict[str, Any] | None = None) -> None:
    with session_scope() as session:
        session.execute(
            update(Export)
            .where(Export.id == export_id)
            .values(status=status, error_message=message, finished_at=utcnow(), result=result)
        )


def run_export(export_id: str) -> str:
    """Claim a queued export and run it by its kind; returns the export's final status."""
    try:
        messages.checked_id(export_id, "exp")
    except messages.Refused as exc:
        return messages.refuse("export", exc)
    claimed = _claim(export_id)
    if claimed is None:
        return "skipped"  # a redelivered message, or an export already done
    job_id, kind, spec, options = claimed
    if kind == "hub":
        return _publish(export_id, job_id, spec, options)
    return _merge(export_id, job_id, spec)


def _merge(export_id: str, job_id: str, spec: JobSpec) -> str:
    """Merge, pack as the `merged` artifact."""
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


def _publish(export_id: str, job_id: str, spec: JobSpec, options: dict[str, Any]) -> str:
    """Stage the adapter (or merge it), commit it to the Hub repo as the job's tenant, record the commit."""
    staged = storage.job_dir(job_id) / f"hub-{export_id}"
    try:
        with heartbeat(SessionLocal, Export, export_id), acting_for_job(job_id) as access:
            target = hub_publish.HubTarget(**options, tenant=access.tenant)
            if not access.token:  # removed since the export was queued
                raise hub_publish.PublishError(
                    f"tenant {access.tenant!r} has no Hub token any more: an admin sets one with PUT "
                    f"/admin/tenants/{access.tenant}/hub-token, then export again"
                )
            folder = hub_publish.stage(spec, storage.local_adapter_dir(job_id), target, staged)
            what = "merged model" if target.merged else f"{spec.adapter.method} adapter"
            published = hub_publish.publish(folder, target, access.token, f"{what} from finetune-service job {job_id}")
    except (hub_publish.PublishError, TrainingError) as exc:
        log.warning("hub export %s of job %s failed: %s", export_id, job_id, exc.message)
        _finish(export_id, "failed", exc.message)
        return "failed"
    except Exception as exc:
        log.exception("hub export %s failed", export_id)
        _finish(export_id, "failed", f"the Hub export failed ({type(exc).__name__}); see the worker log")
        return "failed"
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log.info("hub export %s of job %s: %s at commit %s", export_id, job_id, published.url, published.commit)
    _finish(export_id, "succeeded", result=asdict(published))
    return "succeeded"

"""Merged export: the adapter merged into an unquantized copy of the base, saved as a loadable model directory.

A 4-bit or 8-bit base is never merged into: the base is reloaded in full precision (bf16 on a GPU that has it,
fp32 otherwise) and the adapter applied to that, so the merged weights are dequantized ones.
"""

import logging
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from sqlalchemy import update
from transformers import AutoModelForCausalLM, AutoTokenizer

from app import storage
from app.core.db import SessionLocal, session_scope
from app.inference.reaper import heartbeat
from app.models import Export, utcnow
from app.spec.job import JobSpec
from worker import record
from worker.artifacts import pack_directory
from worker.training import model as modelling
from worker.training.errors import TrainingError

log = logging.getLogger(__name__)
MERGEABLE = {"lora", "dora", "rslora", "ia3"}  # prompt-learning methods add virtual tokens: nothing to merge


def merge_adapter(spec: JobSpec, adapter_dir: Path, out_dir: Path) -> Path:
    """Write out_dir: config.json, model.safetensors (merged weights) and the job's tokenizer."""
    if spec.adapter.method not in MERGEABLE:
        raise TrainingError(
            "not_mergeable", f"a {spec.adapter.method} adapter has no weights to merge; export works for lora-like ones"
        )
    source = modelling.resolve_base_model(spec.base_model)
    dtype = modelling.compute_dtype() if modelling.device_type() == "cuda" else torch.float32
    if modelling.prequantized_method(source):
        raise TrainingError(
            "not_mergeable", f"{spec.base_model!r} ships quantized (GPTQ/AWQ): it cannot be dequantized"
        )
    base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    shutil.rmtree(out_dir, ignore_errors=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(out_dir)  # the tokenizer the job trained with
    return out_dir


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
    claimed = _claim(export_id)
    if claimed is None:
        return "skipped"  # a redelivered message, or an export already done
    job_id, spec = claimed
    job_dir = storage.job_dir(job_id)
    try:
        with heartbeat(SessionLocal, Export, export_id):  # a worker that dies here is reaped by the API
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

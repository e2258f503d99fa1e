"""Requests answered on a worker: POST /jobs/{id}/predict, /generate and /evaluations (tasks in worker/tasks.py).

Predict: a classification job's adapter labels texts. Generate: base and adapter outputs side by side
(worker/training/generation.py). Both answers go to the call: the API records the call and waits on it
(app/broker/calls.py, shared with exports). An evaluation is a record of its own (worker/training/evaluation.py).
Redis is not trusted: a message is checked against its call's record (worker/messages.py), only the caller's texts,
prompts and sampling options are taken from it, and the spec, adapter and checksum are read from SQL.

Loaded classifiers stay in a small LRU cache keyed by job and adapter checksum, so only a job's first request pays
for loading. That needs the tasks to run in the worker process itself: start the inference worker with `--pool solo`
(docs/operations.md); under the training worker's prefork pool each request loads the model again.
"""

import logging
import re
import shutil
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from app import storage
from app.broker import calls as worker_calls
from app.core.db import SessionLocal, session_scope
from app.datasets.tenant_access import acting_for_job
from app.inference.generate import GenerateRequest
from app.inference.predict import PredictRequest
from app.inference.reaper import heartbeat
from app.models import Artifact, Evaluation, utcnow
from app.spec import examples as shared
from app.spec.job import JobSpec
from worker import messages, record
from worker.training import data, evaluation
from worker.training.classifier import LABELS_FILE, TrainedClassifier
from worker.training.errors import TrainingError
from worker.training.generation import Sampling, load_for_inference, side_by_side

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_LOADED_MODELS = 2  # base + adapter each; more would hold more GPU memory than one worker should
log = logging.getLogger(__name__)


class ModelCache:
    """The last few loaded models; the least recently used is dropped first."""

    def __init__(self, size: int):
        self.size = size
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, key: tuple[str, str], load: Callable[[], Any]) -> Any:
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.size:
            self._models.popitem(last=False)  # dropped before the next load, so two never share the memory
        self._models[key] = model = load()
        return model


_classifiers = ModelCache(MAX_LOADED_MODELS)


def unpacked_adapter(job_id: str, archive: Path, sha256: str, marker: str = LABELS_FILE) -> Path:
    """The adapter archive extracted once per checksum under FT_DATA_DIR/cache/adapters.

    The archive must hash to `sha256` (the Artifact row's), so the cache key is honest; the directory is built from
    a checked id and checksum only and kept inside FT_DATA_DIR before anything is deleted or extracted there.
    `marker`: the file a usable adapter has (a classifier's labels; serving asks for `adapter_config.json`).
    """
    if not storage.SAFE_ID.fullmatch(job_id) or not SHA256.fullmatch(sha256):
        raise TrainingError("conflict", f"refused to unpack adapter {job_id!r}/{sha256!r}: not an id and checksum")
    dest = (storage.data_root() / "cache" / "adapters" / f"{job_id}-{sha256[:16]}").resolve()
    if not dest.is_relative_to(storage.data_root()):
        raise TrainingError("conflict", f"refused to unpack job {job_id}'s adapter outside the data directory")
    if (dest / marker).is_file():
        return dest
    if not archive.is_file():
        raise TrainingError("conflict", f"the adapter of job {job_id} is recorded but its file is missing")
    if storage.sha256_file(archive) != sha256:
        raise TrainingError("conflict", f"job {job_id}'s adapter file does not match its recorded checksum")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(partial, filter="data")
    if not (partial / marker).is_file():
        raise TrainingError("conflict", f"job {job_id}'s adapter has no {marker}: it is not the adapter asked for")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def _classifier_of(job_id: str) -> tuple[JobSpec, str, str]:
    """A classification job's spec, adapter key and checksum: from SQL, never from the message."""
    with session_scope() as session:
        job, spec = messages.stored_spec(session, job_id)
        if spec.task != "classification":
            raise TrainingError("conflict", f"job {job_id} is not a classification job: predict needs one")
        adapter = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "adapter"))
        if adapter is None:
            raise TrainingError("conflict", f"job {job_id} is {job.status}: it has no adapter to predict with")
        return spec, adapter.path, adapter.sha256


def predict(job_id: str, texts: list[str]) -> list[dict[str, Any]]:
    """[{label, scores}] for the texts, with the job's trained classifier (loaded once, then cached)."""
    spec, key, sha256 = _classifier_of(job_id)

    def load() -> TrainedClassifier:
        log.info("loading job %s's classifier (adapter %s on %s)", job_id, sha256[:12], spec.base_model)
        return TrainedClassifier(spec, unpacked_adapter(job_id, storage.cached(key), sha256))

    return _classifiers.get((job_id, sha256), load).predict(texts)


def _answer(call_id: str, job_id: str, what: str, work: Callable[[], Any]) -> str:
    """Run one worker call and record its answer: results, the user's error (4xx), or an internal error."""
    worker_calls.finish(call_id, "running")
    try:
        with acting_for_job(job_id):  # Hub reads (the base model) as the job's tenant: its allow-lists, its token
            results = work()
    except (TrainingError, shared.RowError) as exc:
        log.warning("%s %s for job %s failed: %s", what, call_id, job_id, exc.message)
        kind = exc.type if isinstance(exc, TrainingError) else "invalid_request"
        worker_calls.finish(call_id, "failed", error={"type": kind, "message": exc.message})
        return "failed"
    except Exception as exc:
        log.exception("%s %s for job %s failed", what, call_id, job_id)
        message = f"{what} failed ({type(exc).__name__}: {str(exc)[:300]}); see the worker log"
        worker_calls.finish(call_id, "failed", error={"type": "internal_error", "message": message})
        return "failed"
    worker_calls.finish(call_id, "succeeded", results=results)
    return "succeeded"


def run_prediction(call_id: str, job_id: str, payload: dict[str, Any]) -> str:
    """The worker side of POST /jobs/{id}/predict: predict, and record the answer on the call.

    Only `texts` is taken from the payload (checked as the API checks it); spec and adapter come from SQL."""
    try:
        messages.check_call(call_id, job_id)
    except messages.Refused as exc:
        return messages.refuse("prediction", exc)

    def work() -> list[dict[str, Any]]:
        texts = payload.get("texts") if isinstance(payload, dict) else None
        return predict(job_id, messages.request_data(PredictRequest, {"texts": texts}).texts)

    return _answer(call_id, job_id, "prediction", work)


def run_generation(call_id: str, job_id: str, request: dict[str, Any]) -> str:
    """The worker side of POST /jobs/{id}/generate: load the job's model, generate, record the answer."""
    try:
        messages.check_call(call_id, job_id)
    except messages.Refused as exc:
        return messages.refuse("generation", exc)

    def generate() -> list[dict[str, Any]]:
        body = messages.request_data(GenerateRequest, request)  # before any model is loaded
        with session_scope() as session:
            job, spec = messages.stored_spec(session, job_id)
            if spec.task == "classification" or job.status != "succeeded":
                message = f"job {job_id} is a {job.status} {spec.task} job: generation needs a succeeded causal_lm job"
                raise TrainingError("conflict", message)
        model, tokenizer = load_for_inference(spec, storage.local_adapter_dir(job_id))
        sampling = Sampling(
            max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed
        )
        return side_by_side(spec, model, tokenizer, body.prompts, sampling)

    return _answer(call_id, job_id, "generation", generate)


# --- POST /jobs/{id}/evaluations: base vs adapter, on demand ---


def _claim_evaluation(evaluation_id: str) -> tuple[str, JobSpec, str | None, dict[str, Any]] | None:
    with session_scope() as session:
        claimed = record.claim_queued_request(session, Evaluation, evaluation_id)
        if claimed is None:
            return None
        row, job = claimed
        return job.id, JobSpec.model_validate(job.spec), row.dataset_id, dict(row.options)


def _finish_evaluation(evaluation_id: str, status: str, result: Any = None, message: str | None = None) -> None:
    with session_scope() as session:
        session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id)
            .values(status=status, result=result, error_message=message, finished_at=utcnow())
        )


def _evaluation_rows(spec: JobSpec, dataset_id: str | None) -> list[dict[str, Any]]:
    """The named dataset's rows, else the job's own eval rows (validation dataset or held-out split)."""
    if dataset_id is None:

        def stored(ref: object) -> Path | None:
            return storage.cached_dataset(ref) if isinstance(ref, str) else None

        return evaluation.eval_rows(spec, stored(spec.dataset), stored(spec.validation_dataset))
    path = storage.cached_dataset(dataset_id)
    if not path.is_file():
        raise TrainingError("dataset_error", f"dataset {dataset_id} was deleted before the evaluation ran")
    return data.read_rows(path)


def run_evaluation(evaluation_id: str) -> str:
    """Claim a queued evaluation, measure base vs adapter, store the result; returns the final status."""
    try:
        messages.checked_id(evaluation_id, "ev")
    except messages.Refused as exc:
        return messages.refuse("evaluation", exc)
    claimed = _claim_evaluation(evaluation_id)
    if claimed is None:
        return "skipped"  # a redelivered message, or an evaluation already done or reaped
    job_id, spec, dataset_id, options = claimed
    try:
        with (
            heartbeat(SessionLocal, Evaluation, evaluation_id),
            tempfile.TemporaryDirectory() as scratch,
            acting_for_job(job_id),  # Hub reads (the base model, a Hub dataset's rows) as the job's tenant
        ):
            rows = _evaluation_rows(spec, dataset_id)
            adapter_dir = storage.local_adapter_dir(job_id)  # unpacked from the store when not on this disk
            if not (adapter_dir / "adapter_config.json").is_file():
                raise TrainingError("conflict", f"job {job_id}'s adapter files are gone (deleted or expired)")
            result = evaluation.evaluate_adapter(
                spec, adapter_dir, rows, Path(scratch), evaluation.EvaluationOptions(**options)
            )
    except TrainingError as exc:
        log.warning("evaluation %s of job %s failed: %s", evaluation_id, job_id, exc.message)
        _finish_evaluation(evaluation_id, "failed", message=exc.message)
        return "failed"
    except Exception as exc:
        log.exception("evaluation %s of job %s failed", evaluation_id, job_id)
        message = f"the evaluation failed ({type(exc).__name__}: {str(exc)[:300]}); see the worker log"
        _finish_evaluation(evaluation_id, "failed", message=message)
        return "failed"
    log.info("evaluation %s of job %s: %s", evaluation_id, job_id, result)
    _finish_evaluation(evaluation_id, "succeeded", result=result)
    return "succeeded"

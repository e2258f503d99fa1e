"""One attempt's experiment trackers: opened as training starts, fed from the SQL record, ended with the job.

A background thread does all of it, so training never waits on a tracker's network: it opens each run (the one an
earlier attempt of the job began, when there is one), then every FLUSH_EVERY_S sends the points stored since (the
same rows GET /jobs/{id}/metrics serves, so every kind of job, multi-GPU ones too, is covered alike), and when the
attempt ends sends the rest, uploads the adapter of a job that succeeded and ends each run with the job's status.
A tracker that fails is dropped with a `warning` event and a log line; training goes on.
"""

import contextvars
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy import select, update

from app import storage
from app.core.db import session_scope
from app.models import Job
from app.observability.metrics_service import curve
from app.spec.integrations import SECRETS
from app.spec.job import JobSpec
from app.tenants.secrets import get_secret
from worker.trackers.failures import describe
from worker.trackers.points import flat_params, merged_steps, run_config

log = logging.getLogger(__name__)
FLUSH_EVERY_S = 2.0
OPEN_WAIT_S = 30.0  # how long the outcome waits for the trackers to have started (or failed to)
FINISH_TIMEOUT_S = 300.0  # the attempt's outcome is recorded already; this only holds the worker's next job


class JobTrackers:
    """`with JobTrackers(...)` around an attempt: the runs follow the job while the block runs, and end after it."""

    def __init__(self, job_id: str, spec: JobSpec, warn: Callable[[str], None], resume_step: int | None):
        self.job_id, self.spec, self.warn, self.resume_step = job_id, spec, warn, resume_step
        self.runs: list[tuple[Any, dict[str, Any]]] = []  # the runs still followed, with their references
        self.references: list[dict[str, Any]] = []  # every integration's: what the job's lineage shows
        self._since: dict[str, int | None] = {"train": None, "eval": None}
        self._stop = threading.Event()
        self._opened = threading.Event()  # every run started or failed to: its warning, if any, is queued
        # Run in a copy of this context: the thread's log lines carry the job's ids (app/core/log_context.py)
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._follow,), name=f"trackers-{job_id}", daemon=True
        )

    def __enter__(self) -> "JobTrackers":
        if self.spec.integrations:
            self._thread.start()
        return self

    def wait_opened(self, timeout_s: float = OPEN_WAIT_S) -> None:
        """Wait (bounded) until every run has started or failed to, so that a tracker's warning reaches the job's
        events before the outcome's status event, which ends every follower's stream."""
        if self._thread.is_alive():
            self._opened.wait(timeout_s)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(FINISH_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning(
                "job %s: trackers busy after %ss; left to finish in the background", self.job_id, FINISH_TIMEOUT_S
            )

    # --- on the trackers' thread ---
    def _follow(self) -> None:
        try:
            self._open()
        finally:
            self._opened.set()
        while self.runs and not self._stop.wait(FLUSH_EVERY_S):
            self._send_points()
        self._stop.wait()  # a tracker that could not start still waits for the attempt, then ends nothing
        if self.runs:
            self._send_points()  # the attempt is over: every point is in SQL now
            self._end()

    def _open(self) -> None:
        from worker.trackers.mlflow_run import MlflowRun
        from worker.trackers.wandb_run import WandbRun

        run_name = self.spec.name or self.job_id
        config = run_config(self.job_id, self.spec)
        resume = self.resume_step is not None
        for integration in self.spec.integrations:
            reference: dict[str, Any] = {"type": integration.type}
            self.references.append(reference)
            try:
                credentials = self._credentials(integration.type)
                if integration.type == "mlflow":
                    run: Any = MlflowRun(integration.mlflow, credentials, self.job_id, run_name)
                    started, resumed = run.start(flat_params(config), resume)
                else:
                    run_dir = storage.job_dir(self.job_id)  # W&B writes under its `wandb/` folder
                    run = WandbRun(integration.wandb, credentials["wandb_api_key"], self.job_id, run_name, run_dir)
                    started, resumed = run.start(config, resume)
            except Exception as exc:
                self._failed(reference, "could not start its run", exc)
                continue
            reference.update(started, state="logging")
            if resumed:  # the run has the points up to the step this attempt resumes from
                self._since = {"train": self.resume_step, "eval": self.resume_step}
            self.runs.append((run, reference))
            log.info("job %s: %s run %s", self.job_id, integration.type, reference.get("url") or reference["run_id"])
        self._record()

    def _credentials(self, kind: str) -> dict[str, str | None]:
        """The tenant's secrets this tracker sends, read from SQL for this attempt only (never the environment)."""
        with session_scope() as session:
            tenant = session.scalar(select(Job.tenant).where(Job.id == self.job_id))
            return {name: get_secret(session, tenant, name) for name in SECRETS[kind]}

    def _send_points(self) -> None:
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            if job is None:
                return
            train = curve(session, job, "train", self._since["train"])  # train first: an eval never lags behind it
            evals = curve(session, job, "eval", self._since["eval"])
        steps = merged_steps(train, evals)
        if not steps:
            return
        for run, reference in list(self.runs):
            self._call(run, reference, "stopped sending metrics", run.log, steps)
        self._since["train"] = train[-1]["step"] if train else self._since["train"]
        self._since["eval"] = evals[-1]["step"] if evals else self._since["eval"]

    def _end(self) -> None:
        with session_scope() as session:
            status = session.scalar(select(Job.status).where(Job.id == self.job_id))
        adapter = storage.job_dir(self.job_id) / "adapter"
        for run, reference in list(self.runs):
            if status == "succeeded" and adapter.is_dir():
                self._call(run, reference, "could not upload the adapter", run.log_adapter, adapter)
            if (run, reference) in self.runs:
                self._call(run, reference, "could not end its run", run.end, status)
            if (run, reference) in self.runs:  # the next attempt of a requeued job continues an open run
                reference["state"] = "open" if status in ("queued", "running") else "ended"
        self._record()

    def _call(self, run: Any, reference: dict[str, Any], doing: str, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception as exc:
            self._failed(reference, doing, exc)
            self.runs.remove((run, reference))
            self._record()

    def _failed(self, reference: dict[str, Any], doing: str, exc: BaseException) -> None:
        kind, reason = reference["type"], describe(exc)
        log.warning("job %s: %s tracker %s: %s", self.job_id, kind, doing, reason, exc_info=exc)
        reference.update(state="failed", error=f"{doing}: {reason}")
        self.warn(f"{kind} tracking {doing} ({reason}); training goes on without it")

    def _record(self) -> None:
        """The runs on the job's lineage (`lineage.integrations`): type, run id, URL, and `state`: `logging`,
        `ended` (with the job), `open` (the job went back to the queue) or `failed` (with `error`)."""
        try:
            with session_scope() as session:
                lineage = session.scalar(select(Job.lineage).where(Job.id == self.job_id)) or {}
                value = {**lineage, "integrations": [dict(r) for r in self.references]}
                session.execute(update(Job).where(Job.id == self.job_id).values(lineage=value))
        except Exception:
            log.exception("job %s: could not record its tracker runs", self.job_id)

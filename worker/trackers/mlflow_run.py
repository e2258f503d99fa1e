"""A job's MLflow run, through MLflow's own REST store with the tenant's credentials passed in explicitly.

Never MLflow's environment: MLFLOW_TRACKING_* variables or ~/.mlflow/credentials of the worker's host would be
sent to whatever server a tenant names. The tracking URI is user-given, so the egress guard checks its host
before every call (public addresses or FT_EGRESS_ALLOW), redirects are never followed, and the adapter is
uploaded only through the tracking server itself (`mlflow-artifacts:`, what `mlflow server` serves by default),
never to a store the server names (a `file:` or `s3:` URI would write to this machine or with its credentials).
"""

import os
import posixpath
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.rest_utils import MlflowHostCreds, augmented_raise_for_status, http_request

from app.core import egress
from app.spec.integrations import MlflowSettings
from worker.trackers.points import Step

JOB_TAG = "ft.job_id"  # finds the job's run again when a later attempt resumes it
STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
# A tracker is best effort: a slow or dead server costs seconds, not MLflow's default of minutes of retries.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
MAX_METRICS, MAX_PARAMS = 1000, 100  # per log-batch request, MLflow's limits


class MlflowRun:
    kind = "mlflow"

    def __init__(self, settings: MlflowSettings, credentials: dict[str, str | None], job_id: str, run_name: str):
        for name, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        os.environ["MLFLOW_ALLOW_HTTP_REDIRECTS"] = "false"  # a server must not bounce the worker inward
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.uri, self.settings, self.job_id, self.run_name = settings.tracking_uri, settings, job_id, run_name
        self._credentials = credentials
        self.store = RestStore(lambda: self._creds(self.uri))
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.artifact_uri: str | None = None

    def _creds(self, host: str) -> MlflowHostCreds:
        self._check_host(host)
        return MlflowHostCreds(
            host=host,
            username=self._credentials.get("mlflow_tracking_username"),
            password=self._credentials.get("mlflow_tracking_password"),
            token=self._credentials.get("mlflow_tracking_token"),
        )

    @staticmethod
    def _check_host(url: str) -> None:
        """Before each call: the host resolves to allowed addresses only (narrows DNS rebinding to one call)."""
        parts = urlsplit(egress.check_url(url))
        egress.resolve_checked(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))

    def start(self, params: dict[str, str], resume: bool) -> tuple[dict[str, Any], bool]:
        """Open the job's run (the one an earlier attempt began, when resuming); returns (reference, resumed)."""
        experiment = self.store.get_experiment_by_name(self.settings.experiment)
        self.experiment_id = (
            experiment.experiment_id if experiment else self.store.create_experiment(self.settings.experiment)
        )
        found = self._earlier_run() if resume else None
        if found is not None:
            self.run_id, self.artifact_uri = found.info.run_id, found.info.artifact_uri
            self.store.update_run_info(self.run_id, RunStatus.from_string("RUNNING"), None, None)
        else:
            run = self.store.create_run(
                experiment_id=self.experiment_id,
                user_id="finetune-service",
                start_time=_ms(time.time()),
                tags=[RunTag(JOB_TAG, self.job_id)],
                run_name=self.run_name,
            )
            self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), MAX_PARAMS):
                self.store.log_batch(self.run_id, metrics=[], params=items[i : i + MAX_PARAMS], tags=[])
        url = f"{self.uri}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        reference = {"type": self.kind, "run_id": self.run_id, "experiment_id": self.experiment_id, "url": url}
        return reference, found is not None

    def _earlier_run(self) -> Any:
        runs = self.store.search_runs(
            [self.experiment_id], f"tags.`{JOB_TAG}` = '{self.job_id}'", ViewType.ACTIVE_ONLY, max_results=1
        )
        return runs[0] if runs else None

    def log(self, steps: list[Step]) -> None:
        metrics = [Metric(key, value, _ms(s.time), s.step) for s in steps for key, value in s.values.items()]
        for i in range(0, len(metrics), MAX_METRICS):
            self.store.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS], params=[], tags=[])

    def log_adapter(self, adapter_dir: Path) -> None:
        """Upload the adapter's files under `adapter/`, through the tracking server's artifact proxy only."""
        if not (self.artifact_uri or "").startswith("mlflow-artifacts:"):
            scheme = (self.artifact_uri or "?").split(":", 1)[0]
            raise ArtifactRefused(
                f"the server keeps this run's artifacts in a `{scheme}:` store, which the worker does not write to; "
                "run `mlflow server` with artifact serving (its default, `--serve-artifacts`)"
            )
        base = MlflowArtifactsRepository.resolve_uri(self.artifact_uri, self.uri)
        if urlsplit(base).netloc != urlsplit(self.uri).netloc:
            raise ArtifactRefused("the server names another host for this run's artifacts; the worker uploads none")
        creds = self._creds(base)
        for path in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(adapter_dir).as_posix()
            with path.open("rb") as body:
                endpoint = posixpath.join("/", "adapter", relative)
                answer = http_request(creds, endpoint, "PUT", data=body, allow_redirects=False)
                augmented_raise_for_status(answer)

    def end(self, status: str | None) -> None:
        """End the run as the job ended; a job sent back to the queue leaves it running for the next attempt."""
        if status in ("queued", "running"):
            return
        state = RunStatus.from_string(STATUS.get(status or "", "KILLED"))  # None: the job was deleted
        self.store.update_run_info(self.run_id, state, _ms(time.time()), None)


class ArtifactRefused(Exception):
    """The server asked for the adapter to go somewhere the worker does not write to."""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)

"""A real `mlflow server` on loopback for the tracker tests, with MLflow's own basic auth on.

Started once per session, in the background, by the first test that asks for it; `ready()` waits until it answers
(~45 s on a busy 2-core machine), so a test can set up the stack meanwhile. Stopped with its whole process group
at the end. Needs the dev extra's `mlflow[auth]` (Flask-WTF). Basic auth makes the credentials real: a job whose
tenant has the right mlflow_tracking_* secrets logs its run; one without them is refused by the server.
"""

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from ftctl.localstack import free_port

MLFLOW = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "mlflow"
START_TIMEOUT_S = 180


@dataclass
class MlflowServer:
    url: str
    username: str
    password: str
    log: Path
    proc: subprocess.Popen

    def ready(self) -> "MlflowServer":
        """Wait until it answers (it starts in the background: the stack and the test's setup overlap its start)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT_S} s; see {self.log}")
            time.sleep(0.5)

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """An MlflowClient of the test process, logged in as the server's admin (only while the block runs)."""
        from mlflow import MlflowClient

        env = {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}
        with mock.patch.dict(os.environ, env):
            yield MlflowClient(tracking_uri=self.url)


def _executable() -> str:
    return str(MLFLOW) if MLFLOW.exists() else "mlflow"


@pytest.fixture(scope="session", name="mlflow_server")
def running_mlflow_server(session_dir: Path) -> Iterator[MlflowServer]:
    """The server, started by the first test that asks (call `ready()` before using it); import
    `running_mlflow_server` into a test module to use it."""
    root = session_dir / f"mlflow-{secrets.token_hex(3)}"
    root.mkdir(parents=True)
    port, password = free_port(), f"pw-{secrets.token_urlsafe(12)}"
    env = {
        **os.environ,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,  # the admin user `admin` the auth app makes on first start
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job-runner processes (huey consumers) to start
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    argv = [
        _executable(),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--app-name",
        "basic-auth",
        "--workers",
        "1",
    ]
    log = root / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield MlflowServer(f"http://127.0.0.1:{port}", "admin", password, log, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it forked
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group did not stop on its own
        proc.wait()

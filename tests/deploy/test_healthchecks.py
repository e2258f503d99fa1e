"""docker-compose.yml's healthchecks, run for real against the real servers (no Docker here): each must pass on a
healthy service and fail on a sick or absent one. The API's is run by test_api_image_env.py; MinIO's `mc ready`
needs the MinIO image and is only checked statically (test_compose_startup.py)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.deploy.files import ROOT, command, services, shell_test

pytestmark = pytest.mark.integration
BIN = str(Path(sys.executable).parent)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check(test: str, env: dict[str, str], timeout: float = 60) -> int:
    """A healthcheck's exit status, run by a shell as Docker runs CMD-SHELL."""
    base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    proc = subprocess.run(["sh", "-c", test], cwd=ROOT, env={**base, **env}, capture_output=True, timeout=timeout)
    return proc.returncode


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """redis-server started with the compose service's own arguments (its password from REDIS_PASSWORD)."""
    password, port = secrets.token_hex(16), _free_port()
    argv = command(services()["redis"]).replace("${REDIS_PASSWORD:?set REDIS_PASSWORD}", password).split()
    assert "--requirepass" in argv and password in argv
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.1)
        yield port, password
    finally:
        _stop(proc)


def test_redis_healthcheck_needs_the_password_and_a_pong(redis_with_password: tuple[int, str]) -> None:
    port, password = redis_with_password
    # In the container redis-cli reaches the default port; here the server listens on a free one.
    test = shell_test(services()["redis"]).replace("redis-cli", f"redis-cli -p {port}")
    assert _check(test, {"REDISCLI_AUTH": password}) == 0
    # redis-cli itself exits 0 on NOAUTH: the check must not take that for health.
    assert _check(test, {"REDISCLI_AUTH": "wrong"}) != 0
    assert _check(test, {}) != 0


def test_redis_healthcheck_fails_with_no_server() -> None:
    test = shell_test(services()["redis"]).replace("redis-cli", f"redis-cli -p {_free_port()}")
    assert _check(test, {"REDISCLI_AUTH": "anything"}) != 0


def test_postgres_healthcheck() -> None:
    """pg_isready as the service runs it, on the test PostgreSQL (its host and port from libpq's variables)."""
    test = shell_test(services()["postgres"])
    assert _check(test, {"PGHOST": "127.0.0.1", "PGPORT": "5432"}) == 0
    assert _check(test, {"PGHOST": "127.0.0.1", "PGPORT": str(_free_port())}) != 0


def test_worker_healthcheck_pings_its_own_worker(tmp_path: Path) -> None:
    """The training worker's command as compose runs it (its own queue here), named as Celery names it in a
    container, celery@<hostname>; the healthcheck with that HOSTNAME passes while it runs, fails for another name
    and fails once the worker is gone."""
    worker = services()["worker"]
    hostname = f"ft-health-{secrets.token_hex(4)}"
    queue = f"training-health-{hostname}"
    env = {**os.environ, "FT_REDIS_URL": TEST_REDIS_URL, "FT_DATA_DIR": str(tmp_path / "data")}
    argv = [sys.executable, "-m", *command(worker).split(), "-Q", queue, "--hostname", f"celery@{hostname}"]
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    test, check_env = shell_test(worker), {"FT_REDIS_URL": TEST_REDIS_URL, "HOSTNAME": hostname}
    # A ping nobody answers waits out --timeout; the misses below need not wait the full 10 s.
    quick = test.replace("--timeout 10", "--timeout 1")
    assert quick != test
    try:
        deadline = time.monotonic() + 90
        while f"celery@{hostname} ready." not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker did not start within 90 s"
            time.sleep(0.3)
        assert _check(test, check_env) == 0, "the healthcheck fails on a running worker"
        assert _check(quick, {**check_env, "HOSTNAME": f"{hostname}-other"}) != 0, "a ping to another node passes"
    finally:
        _stop(proc)
    assert _check(quick, check_env) != 0, "the healthcheck passes with the worker gone"

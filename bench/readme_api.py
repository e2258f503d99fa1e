"""The API as the README starts it, for the API benches: `alembic upgrade head`, `ftctl keys create`, then
`uvicorn app.main:app --host 127.0.0.1 --port PORT`: one process, the default log level (INFO, an access line per
request), nothing tuned. Its own FT_DATA_DIR (SQLite there by default) or a PostgreSQL database of its own.

The bench's own stack (ftctl.localstack, `make bench`) passes `--log-level warning` and runs beside a worker;
measuring here is measuring what users get.
"""

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis

from ftctl.localstack import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POSTGRES_ADMIN_URL = os.environ.get("FT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_answers(url: str = POSTGRES_ADMIN_URL) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextmanager
def postgres_database(prefix: str = "ft_bench") -> Iterator[str]:
    """A PostgreSQL database of its own (SQLAlchemy URL), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(env: dict[str, str]) -> str:
    """The database the API of `env` uses (its FT_DATABASE_URL, else SQLite in its FT_DATA_DIR)."""
    return env.get("FT_DATABASE_URL") or f"sqlite:///{Path(env['FT_DATA_DIR']).resolve() / 'finetune.db'}"


@dataclass
class ReadmeApi:
    """The README's commands in an isolated environment: `prepare()` (migrate, key), `start()`, `stop()`."""

    workdir: Path
    database_url: str | None = None  # None: SQLite in workdir, as the README's defaults
    redis_url: str = "redis://127.0.0.1:6379/5"
    extra_env: dict[str, str] = field(default_factory=dict)
    code_dir: Path = ROOT  # another checkout (`git archive` of a commit) runs that commit's API, for a comparison
    uvicorn_args: list[str] = field(default_factory=list)  # none, as the README; e.g. the bench stack's log level
    port: int = field(default_factory=free_port)
    queue: str = field(default_factory=lambda: f"bench-api-{secrets.token_hex(4)}")
    process: subprocess.Popen | None = None
    key: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "FT_DATA_DIR": str(self.workdir / "var"), "FT_REDIS_URL": self.redis_url}
        env.pop("FT_DATABASE_URL", None)
        if self.database_url:
            env["FT_DATABASE_URL"] = self.database_url
        env["FT_TRAINING_QUEUE"] = self.queue  # its own: no other worker reads what it queues
        return {**env, **self.extra_env}

    def prepare(self) -> "ReadmeApi":
        """`alembic upgrade head` and `ftctl keys create bench` (the key is its last line)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self.env
        run = {"env": env, "cwd": self.code_dir, "check": True, "capture_output": True, "text": True}
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], **run)
        out = subprocess.run([sys.executable, "-m", "ftctl.main", "keys", "create", "bench"], **run).stdout
        self.key = out.strip().splitlines()[-1]
        return self

    def start(self, timeout: float = 60) -> "ReadmeApi":
        """`uvicorn app.main:app --host 127.0.0.1 --port PORT`, its output to workdir/api.log."""
        argv = [str(BIN / "uvicorn"), "app.main:app", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += self.uvicorn_args
        log = (self.workdir / "api.log").open("ab")
        self.process = subprocess.Popen(argv, env=self.env, cwd=self.code_dir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited; see {self.workdir / 'api.log'}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API was not ready within {timeout}s; see {self.workdir / 'api.log'}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def cpu_seconds(self) -> float:
        """User + system CPU the API process has used so far (Linux /proc)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        """Stop, delete the work directory and what its queue left in Redis (messages, kombu's bindings)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        client = redis.Redis.from_url(self.redis_url)
        try:
            for pattern in (f"{self.queue}*", f"_kombu.binding*.{self.queue}"):
                for key in client.scan_iter(match=pattern, count=1000):
                    client.delete(key)
        except redis.RedisError:
            pass  # Redis gone already (a bench's own redis-server): nothing of ours is left to read
        finally:
            client.close()


def machine() -> dict[str, object]:
    """What the figures were taken on: CPUs, model, load averages (the machine may be shared)."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")  # fmt: skip
    return {"cpus": os.cpu_count(), "cpu": model, "load_average": [round(x, 2) for x in os.getloadavg()]}

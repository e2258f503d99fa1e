"""The API image's Python environment, built as Dockerfile.api builds it but without Docker: its COPY lines into a
fresh /srv, requirements/api.lock into a fresh venv (`uv pip sync`, sharing uv's cache), the project on top with
--no-deps. Then, in that venv only: no torch, CUDA or training stack; TRL's templates readable; the `migrate`
service's command on PostgreSQL; the API's command serving; the image's HEALTHCHECK passing; `ftctl keys create`."""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import TEST_REDIS_URL
from tests.deploy.files import DOCKERFILE_API, ROOT, command, healthcheck_cmd, instructions, services

pytestmark = pytest.mark.integration
POSTGRES_ADMIN_URL = os.environ.get("FT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
UV = Path(sys.executable).parent / "uv"
ABSENT = ["torch", "triton", "nvidia", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"]


@dataclass
class ImageEnv:
    srv: Path  # the image's WORKDIR
    python: Path
    env: dict[str, str]  # what the containers get: the venv first on PATH, the service's settings
    build_seconds: float

    def run(self, *argv: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=cwd or self.srv, env=self.env, capture_output=True, text=True, **kwargs)


def _copy_build_context(srv: Path) -> None:
    """Each COPY of Dockerfile.api, as Docker does it: a folder's contents into the destination folder, a file
    into it by name; .dockerignore's caches left out."""
    for line in instructions(DOCKERFILE_API):
        if not line.upper().startswith("COPY "):
            continue
        *sources, dest = line.split()[1:]
        for pattern in sources:
            for source in map(Path, glob.glob(str(ROOT / pattern))):
                target = srv / dest
                if source.is_dir():
                    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target / source.name)


def _uv(*args: str, cwd: Path) -> None:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}
    proc = subprocess.run([str(UV), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"uv {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def _database(name: str, create: bool) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' if create else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageEnv]:
    assert UV.exists(), f"uv is not installed next to {sys.executable}: `pip install -e '.[dev]'`"
    root = tmp_path_factory.mktemp("api-image")
    srv, venv = root / "srv", root / "venv"
    started = time.monotonic()
    _copy_build_context(srv)
    _uv("venv", "--quiet", "--python", sys.executable, str(venv), cwd=root)
    _uv("pip", "sync", "--quiet", "--python", str(venv / "bin" / "python"), "--require-hashes",
        str(srv / "requirements" / "api.lock"), cwd=root)  # fmt: skip
    _uv("pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--no-deps", "--no-build-isolation",
        str(srv), cwd=root)  # fmt: skip
    build_seconds = time.monotonic() - started

    suffix = secrets.token_hex(4)
    database = f"ft_test_image_{suffix}"
    _database(database, create=True)
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "FT_DATA_DIR": str(root / "data"),
        "FT_DATABASE_URL": f"{base}/{database}",
        "FT_REDIS_URL": TEST_REDIS_URL,
        "FT_TRAINING_QUEUE": f"training-image-{suffix}",
        "FT_INFERENCE_QUEUE": f"inference-image-{suffix}",
        "HF_HUB_OFFLINE": "1",
    }
    try:
        yield ImageEnv(srv, venv / "bin" / "python", env, build_seconds)
    finally:
        _database(database, create=False)


def test_the_environment_builds_from_the_lock_quickly(image_env: ImageEnv) -> None:
    # A few seconds on the 2-core dev machine, with a warm uv cache or an empty one (docs/operations.md "Deploy").
    assert image_env.build_seconds < 120, f"building the API's environment took {image_env.build_seconds:.0f}s"


def test_no_torch_cuda_or_training_stack(image_env: ImageEnv) -> None:
    """Outside /srv, so what is checked is the installed environment alone."""
    probe = (
        "import importlib.util, importlib.metadata, json\n"
        f"print(json.dumps([m for m in {ABSENT!r} if importlib.util.find_spec(m)]"
        " + [d.metadata['Name'] for d in importlib.metadata.distributions()"
        " if d.metadata['Name'].lower().startswith(('nvidia', 'cuda'))]))"
    )
    out = image_env.run(str(image_env.python), "-c", probe, cwd=image_env.srv.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"the API's environment has {out.stdout.strip()}"


def test_trl_is_there_for_its_templates_only(image_env: ImageEnv) -> None:
    """The API accepts a chat template that TRL would patch for training only if it can read TRL's patched copy.
    trl is installed without its dependencies: the training stack it needs is absent."""
    probe = (
        "import importlib.metadata, importlib.util, json, re\n"
        "from packaging.requirements import Requirement\n"
        "from app.checks.chat_templates import trl_training_templates\n"
        "needs = [Requirement(r) for r in importlib.metadata.requires('trl')]\n"
        "needs = [r.name for r in needs if not r.marker or r.marker.evaluate({'extra': ''})]\n"
        "present = [n for n in needs if importlib.util.find_spec(re.sub('-', '_', n))]\n"
        "print(json.dumps([len(trl_training_templates()), needs, present]))\n"
    )
    out = image_env.run(str(image_env.python), "-c", probe, cwd=image_env.srv.parent)
    assert out.returncode == 0, out.stderr
    templates, needs, present = json.loads(out.stdout)
    assert templates > 0, "the API's environment has none of TRL's training templates"
    # What it shares with the API (jinja2, huggingface_hub, ...) is there; what it trains with is not.
    assert {"transformers", "accelerate", "datasets"} <= set(needs) - set(present), f"trl came with {present}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_migrate_serve_healthcheck_and_make_a_key(image_env: ImageEnv) -> None:
    """docker-compose's `migrate` command, then the API's, then the image's HEALTHCHECK and the README's first step,
    each run as written (host and port aside)."""
    all_services = services()
    migrate = image_env.run(*command(all_services["migrate"]).split(), timeout=120)
    assert migrate.returncode == 0, f"`alembic upgrade head` failed in the API's environment:\n{migrate.stderr}"

    port = _free_port()
    argv = command(all_services["api"]).replace("0.0.0.0", "127.0.0.1").replace("8000", str(port)).split()
    log = (image_env.srv.parent / "api.log").open("wb")
    api = subprocess.Popen(argv, cwd=image_env.srv, env=image_env.env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None, (image_env.srv.parent / "api.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the API did not answer within 60 s"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

        check = [arg.replace(":8000/", f":{port}/") for arg in healthcheck_cmd(DOCKERFILE_API)]
        assert image_env.run(*check, timeout=30).returncode == 0, "the image's HEALTHCHECK fails on a healthy API"

        made = image_env.run("ftctl", "keys", "create", "image-test", timeout=60)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        jobs = httpx.get(f"{base}/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert jobs.status_code == 200 and jobs.json()["data"] == [], jobs.text
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        try:
            api.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait()
        log.close()

    stopped = image_env.run(*check, timeout=30)
    assert stopped.returncode != 0, "the HEALTHCHECK passes with no API running"

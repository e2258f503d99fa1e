"""Static checks of the deployment files: docker-compose.yml and Dockerfile.gpu (no Docker engine needed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile.gpu"
CUDA_TORCH = r"pip install .*torch==[\d.]+ .*--index-url https://download\.pytorch\.org/whl/cu\d+"


def _run_tool(name: str, *args: str) -> None:
    exe = BIN / name
    assert exe.exists(), f"{name} is not installed next to {sys.executable}: `pip install -e '.[dev]'`"
    proc = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{name} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def _services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def _stages() -> dict[str, str]:
    """Each Dockerfile stage's name -> its text."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", DOCKERFILE.read_text(), flags=re.M | re.I)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_compose_matches_compose_spec() -> None:
    _run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE.name)


def test_dockerfile_passes_hadolint() -> None:
    _run_tool("hadolint", DOCKERFILE.name)


def test_compose_services() -> None:
    services = _services()
    assert {"postgres", "redis", "minio", "minio-init", "api", "worker"} <= services.keys()
    assert services["postgres"]["image"].startswith("postgres:")
    assert "--appendonly yes" in _command(services["redis"])
    assert services["redis"]["volumes"]

    api, worker = services["api"], services["worker"]
    assert "alembic upgrade head" in _command(api)
    assert "uvicorn app.main:app" in _command(api)
    assert "celery -A worker.celery_app worker" in _command(worker)
    assert api["build"]["target"] == "api" and worker["build"]["target"] == "worker"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_api_and_workers_share_files_through_minio_not_a_disk() -> None:
    services = _services()
    assert services["minio"]["image"].startswith("minio/minio")
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc")
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["minio"]["volumes"] and services["minio"]["healthcheck"]
    assert services["api"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"

    scratch = set()
    for name in ("api", "worker", "inference-worker"):
        service = services[name]
        env = service["environment"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert env["FT_DATA_DIR"] in mounts, f"{name}: FT_DATA_DIR (its scratch) must be on a volume"
        scratch.add(mounts[env["FT_DATA_DIR"]])
        assert env["FT_STORAGE_BACKEND"] == "s3"
        assert env["FT_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert f"ft/{env['FT_S3_BUCKET']}" in " ".join(init["entrypoint"]), "minio-init creates the bucket used"
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
        assert env["FT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/\d+", env["FT_REDIS_URL"])
    assert len(scratch) == 3, "no shared disk: each process has its own scratch volume"


def test_dockerfile_stages() -> None:
    stages = _stages()
    assert {"api", "worker"} <= stages.keys()
    worker, api = stages["worker"], stages["api"]
    assert re.search(CUDA_TORCH, worker), "the worker must install a CUDA build of torch"
    assert ".[worker]" in worker
    assert worker.index("torch==") < worker.index(".[worker]"), "CUDA torch must be installed first"
    assert "torch" not in api and "[worker]" not in api
    assert "HEALTHCHECK" in api and "HEALTHCHECK" not in worker


def test_every_installed_package_is_copied_into_each_image() -> None:
    """`pip install .` in an image installs only what was copied: a package missing there (ftctl, say) is missing
    from the image, and `docker compose exec api ftctl keys create` fails."""
    packages = re.findall(r'"(\w+)\*"', re.search(r"include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text())[1])
    assert set(packages) == {"app", "worker", "ftctl", "finetune_client"}
    folders = {"finetune_client": "client"}  # the client package lives in client/ (its own pyproject too)
    for name, text in _stages().items():
        if "pip install" not in text or "COPY app/" not in text:
            continue
        missing = [p for p in packages if f"COPY {folders.get(p, p)}/ {folders.get(p, p)}/" not in text]
        assert not missing, f"stage {name} installs the project without copying {missing}"


def test_compose_has_no_default_credentials_and_redis_needs_a_password() -> None:
    """Redis, PostgreSQL and MinIO take their credentials from required variables (`${X:?...}`: compose stops when
    one is unset), never a default; every service reaches Redis with the password; the header documents each."""
    text, services = COMPOSE.read_text(), _services()
    required = "${{{}:?"
    assert f"--requirepass {required.format('REDIS_PASSWORD')}" in _command(services["redis"])
    assert services["redis"]["environment"]["REDISCLI_AUTH"].startswith(required.format("REDIS_PASSWORD"))
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(required.format("POSTGRES_PASSWORD"))
    minio = services["minio"]["environment"]
    assert minio["MINIO_ROOT_USER"].startswith(required.format("MINIO_ROOT_USER"))
    assert minio["MINIO_ROOT_PASSWORD"].startswith(required.format("MINIO_ROOT_PASSWORD"))
    for name, service in services.items():
        env = service.get("environment") or {}
        if "FT_REDIS_URL" in env:
            assert f"redis://:{required.format('REDIS_PASSWORD')}" in env["FT_REDIS_URL"], name
        if "FT_DATABASE_URL" in env:
            assert f"postgresql+psycopg://ft:{required.format('POSTGRES_PASSWORD')}" in env["FT_DATABASE_URL"], name

    assert not re.search(r"\$\{\w+:?-", text), "no variable may have a default (`${X:-...}`): secrets must be set"
    assert not re.search(r"PASSWORD: (?!\$\{)", text), "a password written into the file"
    header = text[: text.index("\nname:")]
    for variable in set(re.findall(r"\$\{(\w+):\?", text)):
        assert re.search(rf"^#\s+{variable}\s", header, flags=re.M), f"{variable} is not documented at the top"

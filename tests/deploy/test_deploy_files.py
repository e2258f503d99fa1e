"""Static checks of the deployment files: docker-compose.yml, Dockerfile.api and Dockerfile.gpu (no Docker engine
needed). Startup order, healthchecks and image tags: test_compose_startup.py; the locks: test_locks.py."""

from __future__ import annotations

import re

import pytest

from tests.deploy.files import (
    COMPOSE,
    DOCKERFILE_API,
    DOCKERFILE_GPU,
    DOCKERFILES,
    ROOT,
    base_images,
    command,
    copied_paths,
    instructions,
    run_tool,
    services,
    stages,
)

# A name that holds a secret, in compose's environment or a Dockerfile's ENV/ARG.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|_AUTH$", re.I)


def test_compose_matches_compose_spec() -> None:
    run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE.name)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile) -> None:
    run_tool("hadolint", dockerfile.name)


def test_compose_services() -> None:
    all_services = services()
    assert {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker", "inference-worker"} <= set(
        all_services
    )
    assert all_services["postgres"]["image"].startswith("postgres:")
    assert "--appendonly yes" in command(all_services["redis"])
    assert all_services["redis"]["volumes"]

    api, worker = all_services["api"], all_services["worker"]
    assert command(api) == "uvicorn app.main:app --host 0.0.0.0 --port 8000"
    assert "celery -A worker.celery_app worker" in command(worker)
    assert api["build"]["dockerfile"] == "Dockerfile.api" and api["build"]["target"] == "api"
    assert worker["build"]["dockerfile"] == "Dockerfile.gpu" and worker["build"]["target"] == "worker"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "vllm" in all_services["vllm"]["profiles"], "the optional vLLM backend stays behind its profile"


def test_api_and_workers_share_files_through_minio_not_a_disk() -> None:
    all_services = services()
    init = all_services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert all_services["minio"]["volumes"] and all_services["minio"]["healthcheck"]

    scratch = set()
    for name in ("api", "worker", "inference-worker"):
        service = all_services[name]
        assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully", name
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


def test_api_image_has_no_cuda_and_no_torch() -> None:
    """The API's image is a slim Python: no CUDA base, nothing of CUDA or the training stack installed."""
    (base,) = base_images(DOCKERFILE_API)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    text = "\n".join(instructions(DOCKERFILE_API))
    assert not re.search(r"cuda|nvidia|torch|\[worker\]", text, re.I), "the API image must not install CUDA or torch"
    assert "HEALTHCHECK" in text and "USER 10001" in text


def test_worker_image_gets_cuda_torch_from_its_lock() -> None:
    """Dockerfile.gpu installs requirements/worker.lock, whose torch is PyPI's CUDA build (test_locks.py)."""
    worker = stages(DOCKERFILE_GPU)["worker"]
    assert "requirements/worker.lock" in worker
    assert worker.index("requirements/worker.lock") < worker.index("COPY app/"), "the locked layer comes first"
    assert base_images(DOCKERFILE_API) == base_images(DOCKERFILE_GPU), "one Python for both images and both locks"
    assert "USER 10001" in worker


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_installed_package_is_copied_into_each_image(dockerfile) -> None:
    """`pip install .` in an image installs only what was copied: a package missing there (ftctl, say) is missing
    from the image, and `docker compose exec api ftctl keys create` fails."""
    packages = re.findall(r'"(\w+)\*"', re.search(r"include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text())[1])
    assert set(packages) == {"app", "worker", "ftctl", "finetune_client"}
    folders = {"finetune_client": "client"}  # the client package lives in client/ (its own pyproject too)
    copied = copied_paths(dockerfile)
    missing = [p for p in packages if f"{folders.get(p, p)}/" not in copied]
    assert not missing, f"{dockerfile.name} installs the project without copying {missing}"
    assert {"alembic.ini", "migrations/", "pyproject.toml"} <= set(copied)


def test_compose_has_no_default_credentials_and_redis_needs_a_password() -> None:
    """Redis, PostgreSQL and MinIO take their credentials from required variables (`${X:?...}`: compose stops when
    one is unset), never a default; every service reaches Redis with the password; the header documents each."""
    text, all_services = COMPOSE.read_text(), services()
    required = "${{{}:?"
    assert f"--requirepass {required.format('REDIS_PASSWORD')}" in command(all_services["redis"])
    assert all_services["redis"]["environment"]["REDISCLI_AUTH"].startswith(required.format("REDIS_PASSWORD"))
    assert all_services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(required.format("POSTGRES_PASSWORD"))
    minio = all_services["minio"]["environment"]
    assert minio["MINIO_ROOT_USER"].startswith(required.format("MINIO_ROOT_USER"))
    assert minio["MINIO_ROOT_PASSWORD"].startswith(required.format("MINIO_ROOT_PASSWORD"))
    for name, service in all_services.items():
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


def test_no_secret_is_written_into_compose_or_a_dockerfile() -> None:
    """Every secret-like setting comes from the environment: in compose a `${VAR}` value, in a URL no literal
    password; in the Dockerfiles no ENV or ARG that holds one. And `.env` never enters a build context."""
    for name, service in services().items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert str(value).startswith("${"), f"{name}: {key} is written in, not taken from the environment"
            for password in re.findall(r"://[^/:@\s]*:([^@\s]+)@", str(value)):
                assert password.startswith("${"), f"{name}: {key} has a password written into its URL"
    for dockerfile in DOCKERFILES:
        for line in instructions(dockerfile):
            keyword, _, rest = line.partition(" ")
            if keyword.upper() in ("ENV", "ARG"):
                names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or rest.split()[:1]
                leaked = [n for n in names if SECRET_NAME.search(n)]
                assert not leaked, f"{dockerfile.name} bakes {leaked} into the image: pass secrets at run time"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored, ".env (the deployment's secrets) must never be sent to `docker build`"

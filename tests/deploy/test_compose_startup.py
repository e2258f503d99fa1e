"""docker-compose.yml's startup, statically: the one-shot `migrate` that every database user waits on, a healthcheck
on every long-running service, and images pinned to release tags. test_healthchecks.py runs the checks for real."""

from __future__ import annotations

import re

from tests.deploy.files import DOCKERFILE_API, DOCKERFILES, base_images, command, instructions, services, shell_test

# The services that run once and exit; everything else runs for good and needs a healthcheck.
ONE_SHOT = {"migrate", "minio-init"}
# A tag that names one release: x.y[.z...] with an optional variant (16.15, 7.4.11-alpine, v0.32.0,
# 3.11.14-slim-bookworm) or MinIO's RELEASE.<timestamp>; a digest pins it further. Never `latest`, never a major alone.
RELEASE_TAG = re.compile(
    r"(v?\d+\.\d+(\.\d+)*(-[\w.-]+)?|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)(@sha256:[0-9a-f]{64})?"
)


def _image_tag(image: str) -> str:
    name, _, tag = image.partition("@")[0].rpartition(":")
    assert name and "/" not in tag, f"{image} has no tag: pin a release"
    return image[len(name) + 1 :]


def test_migrate_runs_once_and_everyone_on_the_database_waits_for_it() -> None:
    """Migrations run in a one-shot service before any API replica or worker, not in the API's command, so two
    replicas never race to migrate; a failed migration keeps them down."""
    all_services = services()
    migrate = all_services["migrate"]
    assert command(migrate) == "alembic upgrade head"
    assert migrate["restart"] == "no"
    assert migrate["build"] == all_services["api"]["build"], "migrate runs from the API's image"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["environment"]["FT_DATABASE_URL"] == all_services["api"]["environment"]["FT_DATABASE_URL"]

    users = [name for name, s in all_services.items() if "FT_DATABASE_URL" in (s.get("environment") or {})]
    assert {"api", "worker", "inference-worker"} <= set(users)
    for name in users:
        if name != "migrate":
            condition = all_services[name]["depends_on"]["migrate"]["condition"]
            assert condition == "service_completed_successfully", f"{name} must start only after migrate succeeded"
            assert "alembic" not in command(all_services[name]), f"{name} must not migrate: that is migrate's job"
    cmd = next(line for line in instructions(DOCKERFILE_API) if line.startswith("CMD "))
    assert "alembic" not in cmd and "uvicorn" in cmd


def test_every_long_running_service_has_a_healthcheck() -> None:
    all_services = services()
    assert {n for n, s in all_services.items() if s.get("restart") == "no"} == ONE_SHOT
    for name, service in all_services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: a healthcheck that runs a command"


def test_healthchecks_probe_what_each_service_serves() -> None:
    all_services = services()
    assert shell_test(all_services["postgres"]).startswith("pg_isready -U ft -d ft")
    assert "redis-cli ping" in shell_test(all_services["redis"]) and "PONG" in shell_test(all_services["redis"])
    assert "REDISCLI_AUTH" in all_services["redis"]["environment"], "the healthcheck needs the password"
    assert shell_test(all_services["minio"]) == "mc ready local"
    api = shell_test(all_services["api"])
    port = re.search(r"--port (\d+)", command(all_services["api"]))[1]
    assert f"http://localhost:{port}/healthz" in api
    for name in ("worker", "inference-worker"):
        worker = all_services[name]
        check = shell_test(worker)
        assert "celery -A worker.celery_app inspect ping" in check
        # Celery names a worker celery@<hostname> unless told otherwise: the check pings exactly that node.
        assert '--destination "celery@$HOSTNAME"' in check
        assert not re.search(r"(--hostname|-n)\b", command(worker)), f"{name}: its node name must stay the default"


def test_every_image_is_pinned_to_a_release() -> None:
    for name, service in services().items():
        if "build" in service:
            continue
        tag = _image_tag(service["image"])
        assert RELEASE_TAG.fullmatch(tag), f"{name}: {service['image']} is not pinned to a release"
    for dockerfile in DOCKERFILES:
        for image in base_images(dockerfile):
            assert RELEASE_TAG.fullmatch(_image_tag(image)), f"{dockerfile.name}: FROM {image} is not pinned"


def test_release_tag_rule() -> None:
    """The rule above, on tags it must accept and refuse."""
    for good in ("16.15", "7.4.11-alpine", "v0.32.0", "3.11.14-slim-bookworm", "RELEASE.2025-09-07T16-13-09Z"):
        assert RELEASE_TAG.fullmatch(good), good
    for bad in ("latest", "16", "7", "alpine", "7-alpine", "RELEASE", "RELEASE.2025"):
        assert not RELEASE_TAG.fullmatch(bad), bad

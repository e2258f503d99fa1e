"""requirements/*.lock, the images' environments: complete for pyproject.toml, hashed, the API's without the training
stack, the worker's with CUDA torch 2.13.0; and each Dockerfile installs its own lock and nothing unpinned."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.deploy.files import API_LOCK, DOCKERFILE_API, DOCKERFILE_GPU, ROOT, WORKER_LOCK, instructions, lock_pins

# What the images are built for (Makefile `lock`, the Dockerfiles' python:3.11 base).
TARGET = {
    **default_environment(),
    **{"python_version": "3.11", "python_full_version": "3.11.14", "implementation_name": "cpython"},
    **{"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"},
}
# The training stack and CUDA: never in the API's environment (pyproject's import-linter contract says the same of
# its code). trl is there, without its dependencies, for its template files only.
TRAINING_STACK = re.compile(r"torch|triton|nvidia-.*|cuda-.*|transformers|peft|bitsandbytes|accelerate|datasets")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _assert_satisfies(lock, requirements: list[str]) -> None:
    pins = lock_pins(lock)
    for line in requirements:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(TARGET):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{lock.name} lacks {req.name}, which pyproject.toml asks for: `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"{lock.name} pins {req.name}=={pins[name][0]}, outside pyproject.toml's {req.specifier}: `make lock`"
        )


def test_api_lock_covers_the_project_and_leaves_out_the_training_stack() -> None:
    _assert_satisfies(API_LOCK, _project()["dependencies"])
    pins = lock_pins(API_LOCK)
    assert not [name for name in pins if TRAINING_STACK.fullmatch(name)], "the API's lock holds training packages"
    assert "trl" in pins, "the API reads TRL's training chat templates from the installed trl (requirements/api.in)"


def test_worker_lock_covers_the_worker_extra_with_cuda_torch() -> None:
    project = _project()
    _assert_satisfies(WORKER_LOCK, project["dependencies"] + project["optional-dependencies"]["worker"])
    pins = lock_pins(WORKER_LOCK)
    assert pins["torch"][0] == "2.13.0", "the worker image's torch is the build the team tests against"
    assert any(name.startswith("nvidia-cuda-runtime") for name in pins), "torch must be PyPI's CUDA build"


def test_the_api_and_the_worker_agree_on_every_package_they_share() -> None:
    """They share app/ code, SQL rows and Celery messages; the API's lock is constrained by the worker's (so its trl
    ships exactly the templates the worker's trl patches)."""
    api, worker = lock_pins(API_LOCK), lock_pins(WORKER_LOCK)
    shared = api.keys() & worker.keys()
    differ = {name: (api[name][0], worker[name][0]) for name in shared if api[name][0] != worker[name][0]}
    assert not differ, f"api.lock and worker.lock disagree: {differ}; `make lock`"
    assert api["trl"] == worker["trl"]


@pytest.mark.parametrize("lock", [API_LOCK, WORKER_LOCK], ids=lambda p: p.name)
def test_every_pin_has_hashes(lock) -> None:
    pins = lock_pins(lock)
    assert len(pins) > 50
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, f"{lock.name}: no hash for {unhashed}; `make lock` writes them (--generate-hashes)"


@pytest.mark.parametrize(("dockerfile", "lock"), [(DOCKERFILE_API, API_LOCK), (DOCKERFILE_GPU, WORKER_LOCK)])
def test_each_image_installs_its_lock_and_nothing_unpinned(dockerfile, lock) -> None:
    installs = [line for line in instructions(dockerfile) if re.search(r"\bpip\b.*\binstall\b", line)]
    relative = lock.relative_to(ROOT).as_posix()
    assert installs[0].endswith(f"pip install --no-cache-dir --no-deps --require-hashes -r {relative}"), installs
    # Then only the project itself: no dependency resolution, no build-time download of its backend.
    assert installs[1:] == ["RUN pip install --no-cache-dir --no-deps --no-build-isolation ."], installs


def test_make_lock_writes_both_locks_from_pyproject() -> None:
    plan = subprocess.run(["make", "-n", "lock"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    compiles = [line for line in plan.replace("\\\n", " ").splitlines() if "pip compile" in line]
    worker, api = compiles[-2:]
    for line in (worker, api):
        assert "--generate-hashes" in line and "--python-version 3.11" in line and "pyproject.toml" in line, line
    assert "--extra worker" in worker and "-o requirements/worker.lock" in worker
    assert "--config-file requirements/api.uv.toml" in api and "-c requirements/worker.lock" in api
    assert "-o requirements/api.lock" in api

"""Readers for the deployment files (docker-compose.yml, the Dockerfiles, requirements/*.lock) shared by the tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE_API = ROOT / "Dockerfile.api"
DOCKERFILE_GPU = ROOT / "Dockerfile.gpu"
DOCKERFILES = (DOCKERFILE_API, DOCKERFILE_GPU)
API_LOCK = ROOT / "requirements" / "api.lock"
WORKER_LOCK = ROOT / "requirements" / "worker.lock"


def run_tool(name: str, *args: str) -> None:
    """Run a dev tool installed beside this Python and fail with its output."""
    exe = BIN / name
    assert exe.exists(), f"{name} is not installed next to {sys.executable}: `pip install -e '.[dev]'`"
    proc = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{name} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def command(service: dict[str, Any]) -> str:
    value = service["command"]
    return value if isinstance(value, str) else " ".join(value)


def shell_test(service: dict[str, Any]) -> str:
    """A healthcheck's command as the container's shell runs it (compose turns `$$` into `$`)."""
    test = service["healthcheck"]["test"]
    kind, *argv = [test] if isinstance(test, str) else test
    assert kind in ("CMD", "CMD-SHELL"), f"unexpected healthcheck form {kind!r}"
    text = argv[0] if kind == "CMD-SHELL" else " ".join(argv)
    return text.replace("$$", "$")


def instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [line.strip() for line in text.splitlines() if line.strip()]


def stages(dockerfile: Path) -> dict[str, str]:
    """Each stage's name -> its text (instructions after its FROM line)."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", dockerfile.read_text(), flags=re.M | re.I)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def base_images(dockerfile: Path) -> list[str]:
    return [line.split()[1] for line in instructions(dockerfile) if line.upper().startswith("FROM ")]


def copied_paths(dockerfile: Path) -> list[str]:
    """The sources of every COPY from the build context (globs as written)."""
    paths = []
    for line in instructions(dockerfile):
        if line.upper().startswith("COPY ") and "--from" not in line:
            paths.extend(line.split()[1:-1])
    return paths


def healthcheck_cmd(dockerfile: Path) -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    line = next(line for line in instructions(dockerfile) if line.upper().startswith("HEALTHCHECK "))
    return json.loads(line[line.index(" CMD ") + len(" CMD ") :])


def lock_pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, how many hashes) for every requirement in a lock file."""
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=\S)", lock.read_text()):
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if match:
            pins[_normalize(match[1])] = (match[2], len(re.findall(r"--hash=sha256:[0-9a-f]{64}", block)))
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

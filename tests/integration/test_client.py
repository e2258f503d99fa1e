"""The Done-when of the client: ten lines of finetune_client, then the same from the shell with `ftctl`, upload a
dataset, train a tiny QLoRA job on the real stack and download a verified adapter."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from finetune_client import Client

from tests.integration.conftest import ONE_DATABASE, Stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl

pytestmark = ONE_DATABASE
STEPS = 4


def adapter_files(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return {Path(name).name for name in tar.getnames()}


def test_ten_lines_of_python_train_and_download_an_adapter(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "quotes.jsonl").write_bytes(quotes_jsonl())
    with Client(stack.local.base_url, stack.key) as ft:
        dataset = ft.datasets.upload(tmp_path / "quotes.jsonl", name="quotes")
        job = ft.jobs.create(qlora_spec(dataset["id"], max_steps=STEPS))
        job = ft.jobs.wait(job["id"], poll_interval=0.5, timeout=300)
        assert job["status"] == "succeeded", job["error"]
        path = ft.jobs.download(job["id"], "adapter", tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= adapter_files(path)


def test_ftctl_does_the_same_from_the_shell(stack: Stack, tmp_path: Path) -> None:
    env = {**stack.local.env, "FT_API_URL": stack.local.base_url, "FT_API_KEY": stack.key}

    def ftctl(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "ftctl.main", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    (tmp_path / "quotes.jsonl").write_bytes(quotes_jsonl())
    uploaded = ftctl("datasets", "upload", "quotes.jsonl", "--json")
    assert uploaded.returncode == 0, uploaded.stderr
    (tmp_path / "job.json").write_text(json.dumps(qlora_spec(json.loads(uploaded.stdout)["id"], max_steps=STEPS)))
    submitted = ftctl("jobs", "submit", "job.json", "--wait", "--json")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "succeeded" and job["progress"]["step"] == STEPS
    downloaded = ftctl("jobs", "download", job["id"])
    assert downloaded.returncode == 0, downloaded.stderr
    assert "adapter_model.safetensors" in adapter_files(tmp_path / downloaded.stdout.strip())

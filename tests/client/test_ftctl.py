"""`ftctl datasets|jobs ...` on finetune_client against the real API: --json output, downloads and exit codes."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftctl.api import EXIT_JOB_FAILED, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from ftctl.main import app
from tests.client.conftest import add_adapter, add_job, publish, set_job
from tests.conftest import TINY_MODEL


@pytest.fixture
def ftctl(base_url: str, key: str):
    runner = CliRunner()

    def run(*args: str, key: str = key, url: str = base_url):
        return runner.invoke(app, list(args), env={"FT_API_URL": url, "FT_API_KEY": key}, catch_exceptions=False)

    return run


def test_datasets_upload_list_preview_get_in_json_and_text(ftctl, tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("text,label\nfine,1\nbad,0\n")
    uploaded = ftctl("datasets", "upload", str(tmp_path / "rows.csv"), "--name", "rows", "--json")
    assert uploaded.exit_code == 0, uploaded.output
    dataset = json.loads(uploaded.stdout)
    assert (dataset["rows"], dataset["format"]) == (2, "csv")
    assert ftctl("datasets", "upload", str(tmp_path / "rows.csv")).stdout.strip() == dataset["id"]
    assert [d["id"] for d in json.loads(ftctl("datasets", "list", "--json").stdout)] == [dataset["id"]]
    assert dataset["id"] in ftctl("datasets", "list").stdout
    preview = ftctl("datasets", "preview", dataset["id"], "--limit", "1")
    assert preview.stdout.splitlines() == ['{"text": "fine", "label": "1"}']  # CSV cells stay strings
    assert json.loads(ftctl("datasets", "get", dataset["id"], "--json").stdout)["name"] == "rows"


@pytest.mark.usefixtures("queues")
def test_jobs_submit_from_yaml_get_list_cancel(ftctl, tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(8)))
    dataset_id = ftctl("datasets", "upload", str(tmp_path / "rows.jsonl")).stdout.strip()
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: cli\nbase_model: {TINY_MODEL}\ndataset: {dataset_id}\ntraining:\n  max_steps: 2\n")
    submitted = ftctl("jobs", "submit", str(spec))
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert json.loads(ftctl("jobs", "get", job_id, "--json").stdout)["status"] == "queued"
    assert [j["id"] for j in json.loads(ftctl("jobs", "list", "--json").stdout)] == [job_id]
    assert job_id in ftctl("jobs", "list").stdout and job_id in ftctl("jobs", "get", job_id).stdout
    assert json.loads(ftctl("jobs", "cancel", job_id, "--json").stdout)["status"] == "cancelled"
    again = ftctl("jobs", "cancel", job_id)
    assert again.exit_code == EXIT_REFUSED and "HTTP 409" in again.stderr


def test_jobs_wait_logs_and_download(ftctl, tenant: str, tmp_path: Path) -> None:
    job_id = add_job(tenant, status="succeeded", step=2, total_steps=2)
    publish(job_id, "metric", step=1, total_steps=2, loss=0.5)
    publish(job_id, "status", status="succeeded")
    add_adapter(job_id, b"the adapter")
    logs = ftctl("jobs", "logs", job_id, "--follow")
    assert logs.exit_code == 0 and logs.stdout.splitlines()[0] == "step 1/2 loss 0.5000 eta --:--"
    assert logs.stdout.splitlines()[-1].startswith(f"job {job_id} succeeded")
    lines = ftctl("jobs", "logs", job_id, "--json").stdout.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["metric", "status"]
    downloaded = ftctl("jobs", "download", job_id, "-o", str(tmp_path))
    assert downloaded.exit_code == 0 and Path(downloaded.stdout.strip()).read_bytes() == b"the adapter"
    assert json.loads(ftctl("jobs", "wait", job_id, "--json").stdout)["status"] == "succeeded"
    failed = add_job(tenant, status="running")
    set_job(failed, status="failed", error_type="oom", error_message="out of memory")
    waited = ftctl("jobs", "wait", failed)
    assert waited.exit_code == EXIT_JOB_FAILED and "out of memory" in waited.stdout


def test_exit_codes_say_what_went_wrong(ftctl, tmp_path: Path) -> None:
    missing = ftctl("jobs", "get", "job_000000000000000000000000")
    assert missing.exit_code == EXIT_NOT_FOUND and "HTTP 404" in missing.stderr
    (tmp_path / "bad.json").write_text(json.dumps({"base_model": "", "dataset": "ds_x", "training": {"max_steps": 0}}))
    refused = ftctl("jobs", "submit", str(tmp_path / "bad.json"))
    assert (
        refused.exit_code == EXIT_REFUSED and "HTTP 422" in refused.stderr and "  training.max_steps:" in refused.stderr
    )
    (tmp_path / "broken.yaml").write_text("base_model: [unclosed\n")
    assert ftctl("jobs", "submit", str(tmp_path / "broken.yaml")).exit_code == EXIT_USAGE
    assert ftctl("jobs", "list", key="").exit_code == EXIT_USAGE
    assert ftctl("jobs", "list", key="ft_no_such").exit_code == EXIT_REFUSED
    unreachable = ftctl("jobs", "list", url="http://127.0.0.1:9")
    assert unreachable.exit_code == EXIT_UNREACHABLE and "cannot reach the API" in unreachable.stderr
    version = ftctl("--version")
    assert version.exit_code == 0 and version.stdout.startswith("ftctl ")
    assert "Exit codes:" in ftctl("--help").stdout

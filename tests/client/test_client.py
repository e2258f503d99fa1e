"""`finetune_client.Client` against the real API: datasets, pages, specs from files, waiting, events, downloads."""

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from finetune_client import ChecksumMismatch, Client, Conflict, Invalid, NotFound, SseEvent, Unauthorized, Unreachable

from app.core.config import settings
from tests.client.conftest import add_adapter, add_job, publish, set_job
from tests.conftest import TINY_MODEL

ROWS = [{"text": f"example number {i}", "label": i % 2} for i in range(12)]


def jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def test_datasets_upload_from_a_path_or_bytes_then_list_get_preview_delete(
    base_url: str, key: str, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(ROWS))
    with Client(base_url, key) as ft:
        from_path = ft.datasets.upload(path, name="train")
        from_bytes = ft.datasets.upload(jsonl(ROWS[:5]), filename="five.jsonl")
        assert (from_path["rows"], from_path["name"], from_bytes["rows"]) == (12, "train", 5)
        assert ft.datasets.upload(path)["id"] == from_path["id"], "the same file again: the same dataset"
        assert {d["id"] for d in ft.datasets.list()} == {from_path["id"], from_bytes["id"]}
        assert ft.datasets.get(from_bytes["id"])["columns"] == ["text", "label"]
        preview = ft.datasets.preview(from_path["id"], limit=2)
        assert preview["data"] == ROWS[:2] and preview["rows"] == 12
        assert ft.datasets.delete(from_bytes["id"])["deleted"]
        with pytest.raises(NotFound) as missing:
            ft.datasets.get(from_bytes["id"])
    assert missing.value.status == 404 and from_bytes["id"] in missing.value.detail


def test_list_iterates_every_page_by_its_cursor(base_url: str, key: str, tenant: str) -> None:
    ids = [add_job(tenant, status="succeeded") for _ in range(5)]
    with Client(base_url, key) as ft:
        listed = [job["id"] for job in ft.jobs.list(page_size=2)]
        assert listed == ids[::-1], "all five, newest first, over three pages"
        assert [j["id"] for j in ft.jobs.list(status="running")] == []


@pytest.mark.usefixtures("queues")
def test_jobs_from_yaml_and_json_files_and_typed_refusals(
    base_url: str, key: str, tmp_path: Path, tiny_model: Path
) -> None:
    with Client(base_url, key) as ft:
        dataset = ft.datasets.upload(jsonl(ROWS), filename="train.jsonl")
        spec = {"base_model": TINY_MODEL, "dataset": dataset["id"], "training": {"max_steps": 2}}
        (tmp_path / "job.yaml").write_text(
            f"base_model: {TINY_MODEL}\ndataset: {dataset['id']}\ntraining:\n  max_steps: 2\n"
        )
        (tmp_path / "job.json").write_text(json.dumps(spec))
        from_yaml = ft.jobs.create(tmp_path / "job.yaml", idempotency_key="client-yaml")
        assert from_yaml["status"] == "queued" and from_yaml["spec"]["training"]["max_steps"] == 2
        assert ft.jobs.create(str(tmp_path / "job.yaml"), idempotency_key="client-yaml")["id"] == from_yaml["id"]
        assert ft.jobs.create(tmp_path / "job.json")["id"] != from_yaml["id"]
        report = ft.jobs.validate(spec)
        assert report["ok"] and report["total_steps"] == 2
        with pytest.raises(Invalid) as invalid:
            ft.jobs.create({**spec, "training": {"max_steps": -1}})
        assert invalid.value.status == 422 and any(p["field"] == "training.max_steps" for p in invalid.value.problems)
        assert ft.jobs.cancel(from_yaml["id"])["status"] == "cancelled"
        with pytest.raises(Conflict):
            ft.jobs.cancel(from_yaml["id"])
    with Client(base_url, "ft_nope_notakey") as stranger, pytest.raises(Unauthorized) as refused:
        stranger.jobs.get(from_yaml["id"])
    assert refused.value.status == 401 and "API key" in refused.value.detail


def test_an_api_that_is_not_there_is_unreachable() -> None:
    with Client("http://127.0.0.1:9", "ft_x_y", timeout=2) as ft, pytest.raises(Unreachable) as error:
        ft.jobs.get("job_x")
    assert error.value.status is None and "FT_API_URL" in error.value.detail


def test_wait_polls_until_the_job_ends_reporting_progress(base_url: str, key: str, tenant: str) -> None:
    job_id = add_job(tenant, total_steps=4)

    seen: list[tuple[str, int]] = []

    def train() -> None:
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:  # the first poll sees step 0, however loaded the machine
            time.sleep(0.01)
        for step in range(1, 5):
            time.sleep(0.15)
            set_job(job_id, step=step)
        set_job(job_id, status="succeeded")

    threading.Thread(target=train, daemon=True).start()
    with Client(base_url, key) as ft:
        job = ft.jobs.wait(
            job_id, poll_interval=0.05, on_progress=lambda j: seen.append((j["status"], j["progress"]["step"]))
        )
    assert job["status"] == "succeeded" and seen[-1] == ("succeeded", 4)
    assert {step for _, step in seen} >= {0, 4} and len(seen) > 3, seen


def test_events_follow_a_job_across_streams_the_server_ends_missing_nothing(
    monkeypatch: pytest.MonkeyPatch, base_url: str, key: str, tenant: str
) -> None:
    """The server ends every stream after FT_STREAM_MAX_SECONDS; the client goes on after the last id it got."""
    monkeypatch.setattr(settings, "stream_max_seconds", 0.4)
    job_id = add_job(tenant)
    publish(job_id, "status", status="running")

    def train() -> None:
        for step in range(1, 7):
            time.sleep(0.25)  # several server-ended streams over the run
            publish(job_id, "metric", step=step, total_steps=6, loss=1.0 / step)
        set_job(job_id, status="succeeded")
        publish(job_id, "status", status="succeeded")

    threading.Thread(target=train, daemon=True).start()
    got: list[SseEvent] = []
    with Client(base_url, key) as ft:
        for event in ft.jobs.events(job_id):
            got.append(event)
    assert [e.json()["step"] for e in got if e.event == "metric"] == [1, 2, 3, 4, 5, 6]
    assert got[-1].ends_job and len({e.id for e in got}) == len(got), "each event once, the outcome last"
    with Client(base_url, key) as ft:
        resumed = list(ft.jobs.events(job_id, follow=False, last_event_id=got[3].id))
    assert [e.id for e in resumed] == [e.id for e in got[4:]]


def test_download_streams_the_adapter_and_checks_its_sha256(
    base_url: str, key: str, tenant: str, tmp_path: Path
) -> None:
    content = bytes(range(256)) * 5000
    good, lying = add_job(tenant, status="succeeded"), add_job(tenant, status="succeeded")
    add_adapter(good, content)
    add_adapter(lying, content, sha256=hashlib.sha256(b"something else").hexdigest())
    progress: list[tuple[int, int | None]] = []
    with Client(base_url, key) as ft:
        assert [a["name"] for a in ft.jobs.artifacts(good)] == ["adapter"]
        path = ft.jobs.download(
            good, "adapter", tmp_path, on_progress=lambda done, total: progress.append((done, total))
        )
        assert path == tmp_path / f"{good}-adapter.tar.gz" and path.read_bytes() == content
        assert progress[-1] == (len(content), len(content))
        with pytest.raises(ChecksumMismatch):
            ft.jobs.download(lying, "adapter", tmp_path / "lying.tar.gz")
        with pytest.raises(Conflict):
            ft.jobs.download(add_job(tenant, status="running"), "adapter", tmp_path / "none.tar.gz")
    assert not (tmp_path / "lying.tar.gz").exists() and not list(tmp_path.glob("*.part")), "nothing corrupt is kept"

"""`finetune_client.AsyncClient` against the real API: the same calls as `Client`, awaited."""

import asyncio
import json
import time
from pathlib import Path

import pytest
from finetune_client import AsyncClient, ChecksumMismatch, NotFound

from tests.client.conftest import add_adapter, add_job, publish, set_job


def test_async_upload_pages_wait_events_and_download(base_url: str, key: str, tenant: str, tmp_path: Path) -> None:
    rows = "\n".join(json.dumps({"text": f"row {i}"}) for i in range(4)).encode()
    (tmp_path / "rows.jsonl").write_bytes(rows)
    ids = [add_job(tenant, status="succeeded") for _ in range(3)]
    add_adapter(ids[0], b"adapter bytes" * 1000)
    add_adapter(ids[1], b"adapter bytes", sha256="0" * 64)
    running = add_job(tenant)
    publish(running, "metric", step=1, total_steps=2, loss=0.5)

    async def run() -> None:
        async with AsyncClient(base_url, key) as ft:
            dataset = await ft.datasets.upload(tmp_path / "rows.jsonl")
            assert dataset["rows"] == 4 and (await ft.datasets.preview(dataset["id"], 1))["data"] == [{"text": "row 0"}]
            assert [d["id"] async for d in ft.datasets.list()] == [dataset["id"]]
            assert [j["id"] async for j in ft.jobs.list(status="succeeded", page_size=1)] == ids[::-1]
            path = await ft.jobs.download(ids[0], path=tmp_path / "a.tar.gz")
            assert path.read_bytes() == b"adapter bytes" * 1000
            with pytest.raises(ChecksumMismatch):
                await ft.jobs.download(ids[1], path=tmp_path / "b.tar.gz")
            with pytest.raises(NotFound):
                await ft.jobs.get("job_000000000000000000000000")

            async def finish() -> None:
                await asyncio.sleep(0.3)
                publish(running, "metric", step=2, total_steps=2, loss=0.25)
                set_job(running, status="succeeded")
                publish(running, "status", status="succeeded")

            task = asyncio.create_task(finish())
            events = [e async for e in ft.jobs.events(running)]
            await task
            assert [e.event for e in events] == ["metric", "metric", "status"] and events[-1].ends_job
            started = time.monotonic()
            assert (await ft.jobs.wait(running, poll_interval=0.05))["status"] == "succeeded"
            assert time.monotonic() - started < 2

    asyncio.run(run())

"""Uploads stream: a real uvicorn takes large files with flat memory, and a refused upload leaves nothing behind.

The API runs as operators run it (`uvicorn app.main:app`, bench/upload_memory.py's start_api) and its resident
memory is read from /proc. Files are generated while they are sent, never built in this process. Sizes are chosen
so that the code before streaming (which held the file, its text and every row) fails each memory assertion by
far: it grew by 4-9x the file's size (docs/operations.md, "Memory under uploads").
"""

import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.upload_memory import (
    MIB,
    GeneratedFile,
    generated,
    jsonl_file,
    measure_uploads,
    multipart_body,
    post_upload,
    start_api,
    warm_up,
)
from ftctl.localstack import LocalStack

pytestmark = pytest.mark.integration  # it starts the API process

LIMIT = 28 * MIB  # FT_MAX_UPLOAD_BYTES of this API
MAX_GROWTH_MIB = 64  # the bound, four concurrent uploads included
FORMATS = ["jsonl", "csv", "json", "parquet"]


@dataclass
class Api:
    local: LocalStack
    key: str
    root: Path
    baseline_mib: float  # resident memory once warmed up

    @property
    def pid(self) -> int:
        return self.local.processes["api"].pid

    def upload(self, upload: GeneratedFile) -> httpx.Response:
        return post_upload(self.local.base_url, self.key, upload)

    def leftovers(self) -> tuple[int, set[str], list[str]]:
        """Dataset records, entries under FT_DATA_DIR/datasets, and files the API holds open but deleted."""
        with sqlite3.connect(self.root / "data" / "finetune.db") as db:
            records = db.execute("SELECT count(*) FROM datasets").fetchone()[0]
        folder = self.root / "data" / "datasets"
        entries = {p.name for p in folder.iterdir()} if folder.exists() else set()
        held = []
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                target = str(fd.readlink())
            except OSError:
                continue  # closed meanwhile
            if target.endswith("(deleted)"):
                held.append(target)
        return records, entries, held

    def settled_leftovers(self, before: tuple[int, set[str], list[str]]) -> tuple[int, set[str], list[str]]:
        """The leftovers once the API has finished with a refused request (it may still be closing files)."""
        deadline = time.monotonic() + 10
        while (now := self.leftovers()) != before and time.monotonic() < deadline:
            time.sleep(0.1)
        return now


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("upload-streaming")
    local, key = start_api(root, LIMIT)
    try:
        baseline = warm_up(local.base_url, key, local.processes["api"].pid, FORMATS, root)
        yield Api(local, key, root, baseline)
    finally:
        local.stop()


def growth(api: Api, uploads: list[GeneratedFile]) -> tuple[float, list[httpx.Response]]:
    measured = measure_uploads(api.local.base_url, api.key, api.pid, uploads, api.baseline_mib)
    return measured.growth_mib, measured.responses


def test_a_large_jsonl_upload_keeps_the_api_memory_flat(api: Api) -> None:
    upload = jsonl_file(24_000_000, seed=1)
    grew, [response] = growth(api, [upload])
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["format"] == "jsonl" and dataset["size_bytes"] == upload.size and dataset["rows"] == upload.rows
    assert grew < MAX_GROWTH_MIB, f"the API grew by {grew:.0f} MiB for a {upload.size / MIB:.0f} MiB upload"
    preview = httpx.get(
        f"{api.local.base_url}/datasets/{dataset['id']}/preview",
        params={"limit": 2},
        headers={"Authorization": f"Bearer {api.key}"},
    ).json()
    assert [row["label"] for row in preview["data"]] == ["negative", "positive"]
    assert preview["data"][1]["text"].startswith("example 0000000001 of file 0001")


def test_four_concurrent_uploads_keep_the_api_memory_flat(api: Api) -> None:
    uploads = [jsonl_file(8_000_000, seed=10 + i) for i in range(4)]
    grew, responses = growth(api, uploads)
    assert [r.status_code for r in responses] == [201] * 4, [r.text[:200] for r in responses]
    assert len({r.json()["sha256"] for r in responses}) == 4
    assert grew < MAX_GROWTH_MIB, f"the API grew by {grew:.0f} MiB for four uploads of 8 MB at once"


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_other_formats_keep_the_api_memory_flat(api: Api, fmt: str) -> None:
    upload = generated(fmt, 24_000_000, 20, api.root)
    grew, [response] = growth(api, [upload])
    assert response.status_code == 201, response.text
    assert response.json()["format"] == fmt and response.json()["columns"] == ["text", "label"]
    assert response.json()["rows"] == upload.rows
    assert grew < MAX_GROWTH_MIB, f"the API grew by {grew:.0f} MiB for a {upload.size / MIB:.0f} MiB {fmt} upload"


def test_a_bad_row_at_the_end_of_a_large_file_leaves_no_file_and_no_record(api: Api) -> None:
    before = api.leftovers()
    upload = jsonl_file(12_000_000, seed=30, bad_last_row=True)
    grew, [response] = growth(api, [upload])
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"line {upload.rows + 1}: not valid JSON")
    assert api.settled_leftovers(before) == before
    assert grew < MAX_GROWTH_MIB


def _raw_request(api: Api, content_length: int | None) -> tuple[socket.socket, bytes]:
    """An upload's request head, sent on a socket of our own (to stop mid-body, or send no body at all)."""
    headers, _ = multipart_body(jsonl_file(1000))
    length = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
    head = (
        f"POST /datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api.key}\r\n"
        f"Content-Type: {headers['Content-Type']}\r\n{length}\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", api.local.api_port), timeout=30)
    sock.sendall(head)
    return sock, head


def test_an_upload_over_the_limit_is_413_before_its_body_and_while_it_streams(api: Api) -> None:
    before = api.leftovers()
    sock, _ = _raw_request(api, LIMIT + 10 * MIB)  # declared too large: answered before a byte of the body
    with sock:
        assert sock.recv(200).startswith(b"HTTP/1.1 413")
    chunked = jsonl_file(LIMIT + MIB, seed=40)
    headers, body = multipart_body(chunked)
    del headers["Content-Length"]  # sent chunked: counted while it streams
    response = httpx.post(
        f"{api.local.base_url}/datasets",
        content=body,
        headers={**headers, "Authorization": f"Bearer {api.key}"},
        timeout=60,
    )
    assert response.status_code == 413 and "FT_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert api.settled_leftovers(before) == before


def test_a_client_that_disconnects_mid_upload_leaves_nothing(api: Api) -> None:
    before = api.leftovers()
    upload = jsonl_file(12_000_000, seed=50)
    headers, body = multipart_body(upload)
    sock, _ = _raw_request(api, int(headers["Content-Length"]))
    sent = 0
    with sock:
        for chunk in body:
            sock.sendall(chunk)
            sent += len(chunk)
            if sent > 4 * MIB:  # gone, a third of the way in
                break
    assert api.settled_leftovers(before) == before  # the spooled part closed (and so deleted), no rows, no record
    assert httpx.get(f"{api.local.base_url}/readyz").status_code == 200
    again = api.upload(upload)  # the same file whole: stored as if the broken attempt had never been
    assert again.status_code == 201, again.text

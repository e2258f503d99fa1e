"""Uploads in-process against a migrated SQLite: the size limit (413) and nothing half-stored on any failure."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app import storage
from app.core.config import settings
from app.core.db import SessionLocal
from app.datasets import service as datasets_service
from app.main import create_app
from app.models import Dataset
from app.tenants.auth import create_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
    with SessionLocal() as session:
        key = create_key(session, "uploads", tenant="upload-tests")
        session.commit()
    yield TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)


def stored_state() -> tuple[int, set[str]]:
    """How many dataset records, and which entries the datasets folder holds."""
    with SessionLocal() as session:
        count = session.scalar(select(func.count()).select_from(Dataset))
    folder = storage.data_root() / "datasets"
    return count, {p.name for p in folder.iterdir()} if folder.exists() else set()


def jsonl(n: int, tag: str) -> bytes:
    return "".join(json.dumps({"text": f"{tag} example {i}"}) + "\n" for i in range(n)).encode()


def test_oversize_upload_is_413_and_the_limit_is_configurable(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "max_upload_bytes", 200)
    before = stored_state()
    too_big = client.post("/datasets", files={"file": ("big.jsonl", jsonl(20, "big"))})
    assert too_big.status_code == 413 and "200-byte limit (FT_MAX_UPLOAD_BYTES)" in too_big.json()["detail"]
    assert stored_state() == before
    small = client.post("/datasets", files={"file": ("small.jsonl", jsonl(2, "small"))})
    assert small.status_code == 201 and small.json()["rows"] == 2


def test_a_failure_while_storing_leaves_nothing(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    before = stored_state()

    def broken_disk(dataset_id: str) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(storage, "dataset_dir", broken_disk)
    failed = client.post("/datasets", files={"file": ("doomed.jsonl", jsonl(3, "doomed"))})
    assert failed.status_code == 500
    monkeypatch.undo()
    assert stored_state() == before  # no record, no staged folder


def test_bad_rows_leave_nothing_and_a_good_file_is_stored_whole(client: TestClient) -> None:
    before = stored_state()
    for name, content in [("broken.jsonl", b'{"text": "a"}\n{"text": \n'), ("ragged.csv", b"a,b\n1\n")]:
        assert client.post("/datasets", files={"file": (name, content)}).status_code == 422
    assert stored_state() == before
    created = client.post("/datasets", files={"file": ("whole.jsonl", jsonl(5, "whole"))}).json()
    assert datasets_service.read_rows(created["id"]) == [{"text": f"whole example {i}"} for i in range(5)]
    preview = client.get(f"/datasets/{created['id']}/preview", params={"limit": 2}).json()
    assert preview["rows"] == 5 and preview["data"] == [{"text": "whole example 0"}, {"text": "whole example 1"}]

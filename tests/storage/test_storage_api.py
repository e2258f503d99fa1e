"""The API in-process with FT_STORAGE_BACKEND=s3 (a real moto_server): datasets go to the bucket, are read back
from it when this machine's FT_DATA_DIR lacks them, stream from it, count in /usage and are deleted from it."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app import storage
from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.tenants.auth import create_key
from tests.conftest import SESSION_DIR
from tests.s3_server import S3Server, moto_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server(SESSION_DIR / "moto") as server:
        yield server


@pytest.fixture
def client(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str]]:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
    with SessionLocal() as session:
        key = create_key(session, "storage", tenant="storage-tests")
        session.commit()
    bucket = s3.make_bucket()
    for name, value in {"storage_backend": "s3", "s3_bucket": bucket, "s3_endpoint_url": s3.endpoint_url}.items():
        monkeypatch.setattr(settings, name, value)
    monkeypatch.setattr(storage, "_stores", {})  # the store is built from the settings above
    yield TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}), bucket


def test_dataset_lives_in_the_bucket(client: tuple[TestClient, str], s3: S3Server) -> None:
    api, bucket = client
    rows = [{"text": f"stored in s3 {i}"} for i in range(5)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    created = api.post("/datasets", files={"file": ("s3.jsonl", body)})
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    key = f"datasets/{dataset_id}/rows.jsonl"
    assert s3.keys(bucket) == [key]

    shutil.rmtree(storage.dataset_dir(dataset_id))  # as on another API replica: only the bucket has it
    preview = api.get(f"/datasets/{dataset_id}/preview", params={"limit": 2})
    assert preview.status_code == 200 and preview.json()["data"] == rows[:2]

    content = api.get(f"/v1/files/{dataset_id}/content")
    assert content.status_code == 200 and [json.loads(line) for line in content.text.splitlines()] == rows
    size = s3.client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    assert api.get("/usage").json()["storage_bytes"]["datasets"] == size

    deleted = api.delete(f"/datasets/{dataset_id}")
    assert deleted.status_code == 200 and deleted.json()["freed_bytes"] == size
    assert s3.keys(bucket) == [] and not storage.dataset_dir(dataset_id).exists()

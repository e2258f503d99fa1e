"""Both storage backends against real endpoints: the local directory, and S3 served by a moto_server process."""

import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import storage
from app.storage.local import LocalStore
from app.storage.s3 import S3Store
from tests.conftest import SESSION_DIR
from tests.s3_server import S3Server, moto_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server(SESSION_DIR / "moto") as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> storage.Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server: S3Server = request.getfixturevalue("s3")
    return S3Store(server.make_bucket(), prefix="svc/", endpoint_url=server.endpoint_url, region="us-east-1")


def _file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_put_get_stream_exists(store: storage.Store, tmp_path: Path) -> None:
    content = bytes(range(256)) * 9000  # > 2 MiB: several stream chunks
    store.put_file("jobs/job_a/adapter.tar.gz", _file(tmp_path / "in.bin", content))
    assert store.exists("jobs/job_a/adapter.tar.gz") and not store.exists("jobs/job_a/other.tar.gz")

    store.get_file("jobs/job_a/adapter.tar.gz", tmp_path / "cache" / "out.bin")
    assert (tmp_path / "cache" / "out.bin").read_bytes() == content
    assert not list((tmp_path / "cache").glob("*.partial"))

    chunks, size = store.open_read("jobs/job_a/adapter.tar.gz")
    parts = list(chunks)
    assert size == len(content) and b"".join(parts) == content and len(parts) > 1


def test_missing_keys_raise_file_not_found(store: storage.Store, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.get_file("datasets/ds_x/rows.jsonl", tmp_path / "rows.jsonl")
    with pytest.raises(FileNotFoundError):
        store.open_read("datasets/ds_x/rows.jsonl")
    assert not (tmp_path / "rows.jsonl").exists() and not (tmp_path / "rows.jsonl.partial").exists()


def test_list_size_and_delete_prefix(store: storage.Store, tmp_path: Path) -> None:
    for key, size in [("jobs/j1/a.tar.gz", 10), ("jobs/j1/checkpoints/checkpoint-5.tar.gz", 20), ("jobs/j2/a", 5)]:
        store.put_file(key, _file(tmp_path / key, b"x" * size))
    assert store.size_of_prefix("jobs/j1/") == 30
    listed = sorted(k for k, _ in store.list_keys("jobs/j1/"))
    assert listed == ["jobs/j1/a.tar.gz", "jobs/j1/checkpoints/checkpoint-5.tar.gz"]
    assert store.delete_prefix("jobs/j1/checkpoints/checkpoint-5.tar.gz") == 20  # one key
    assert store.delete_prefix("jobs/j1/") == 10
    assert store.size_of_prefix("jobs/j1/") == 0 and store.exists("jobs/j2/a")
    assert store.delete_prefix("jobs/j1/") == 0  # already gone: nothing freed, no error


def test_presigned_url_downloads_without_the_api(store: storage.Store, tmp_path: Path) -> None:
    store.put_file("jobs/job_p/adapter.tar.gz", _file(tmp_path / "a", b"adapter bytes"))
    url = store.presigned_url("jobs/job_p/adapter.tar.gz", "job_p-adapter.tar.gz")
    if isinstance(store, LocalStore):
        assert url is None  # the local backend has nothing to redirect to: the API serves the file
        return
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"adapter bytes"
    assert "job_p-adapter.tar.gz" in response.headers["content-disposition"]


def test_local_store_never_copies_a_file_onto_itself(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    path = _file(tmp_path / "jobs" / "j" / "adapter.tar.gz", b"once")
    store.put_file("jobs/j/adapter.tar.gz", path)
    store.get_file("jobs/j/adapter.tar.gz", path)
    assert path.read_bytes() == b"once" and sorted(p.name for p in path.parent.iterdir()) == ["adapter.tar.gz"]
    with pytest.raises(ValueError, match="escapes"):
        store.path("../outside")


def test_s3_store_refuses_keys_that_climb_out(s3: S3Server) -> None:
    store = S3Store(s3.make_bucket(), endpoint_url=s3.endpoint_url, region="us-east-1")
    with pytest.raises(ValueError):
        store.exists("jobs/../../etc/passwd")
    with pytest.raises(ValueError, match="FT_S3_BUCKET"):
        S3Store("", endpoint_url=s3.endpoint_url)


def test_unpack_is_atomic_and_replaces_an_older_copy(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _file(source / "adapter_config.json", b"{}")
    _file(source / ".complete", b"")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in source.iterdir():
            tar.add(path, arcname=path.name)
    dest = _file(tmp_path / "out" / "stale.txt", b"old").parent
    storage.unpack(archive, dest)
    assert sorted(p.name for p in dest.iterdir()) == [".complete", "adapter_config.json"]
    assert not (tmp_path / "out.partial").exists()

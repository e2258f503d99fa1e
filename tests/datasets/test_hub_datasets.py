"""Hub datasets by name: split files chosen by the Hub's conventions, read from huggingface_hub's cache."""

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
from alembic import command
from alembic.config import Config
from pydantic import ValidationError

from app.checks.service import check_job_spec
from app.core.config import settings
from app.core.db import SessionLocal
from app.core.errors import Invalid, TooLarge
from app.datasets.hub import HubUnavailable, load_hub_dataset, split_files, split_paths
from app.spec.formats import HubDataset
from app.spec.job import JobSpec
from app.tenants.auth import Caller
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")  # check_job_spec reads the tenant's Hub token


def mirror_hub_dataset(cache: Path, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> Path:
    """A dataset repo laid out in the Hub cache as `snapshot_download` leaves it; returns the snapshot folder."""
    root = cache / f"datasets--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    for name, content in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(content)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache for this test (HF_HUB_OFFLINE=1 is set for all tests: nothing is downloaded)."""
    cache = tmp_path / "hf-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _names(root: Path, split: str) -> list[str]:
    return [p.relative_to(root).as_posix() for p in split_files(root, split)]


def test_split_files_follow_the_hub_conventions(tmp_path: Path) -> None:
    layout = [
        "README.md",
        "dataset_infos.json",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "data/validation-00000-of-00001.parquet",
        "test.jsonl",
        "dev/part.csv",
    ]
    for name in layout:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert _names(tmp_path, "train") == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert _names(tmp_path, "validation") == ["data/validation-00000-of-00001.parquet", "dev/part.csv"]
    assert _names(tmp_path, "test") == ["test.jsonl"]
    assert _names(tmp_path, "holdout") == []


def test_files_naming_no_split_are_all_train(tmp_path: Path) -> None:
    (tmp_path / "quotes.jsonl").write_text("x")
    assert _names(tmp_path, "train") == ["quotes.jsonl"] and _names(tmp_path, "test") == []


def test_splits_are_chosen_from_a_listing_of_paths() -> None:
    """The same rules on the Hub's file listing, before anything is downloaded."""
    listing = [".gitattributes", "README.md", "data/train-0.parquet", "data/test-0.parquet", "extra/valid.csv"]
    assert split_paths(listing, "train") == ["data/train-0.parquet"]
    assert split_paths(listing, "validation") == ["extra/valid.csv"]
    assert split_paths(["quotes.jsonl", "notes.txt"], "train") == ["quotes.jsonl"]


def test_load_from_the_cache_parses_like_an_upload(hub_cache: Path) -> None:
    train = "".join(json.dumps({"quote": f"q{i}", "tags": ["a", "b"]}) + "\n" for i in range(3)).encode()
    mirror_hub_dataset(hub_cache, "Abirate/english_quotes", {"quotes.jsonl": train})
    parsed = load_hub_dataset(HubDataset(hub="Abirate/english_quotes"))
    assert parsed.columns == ["quote", "tags"] and parsed.rows[0] == {"quote": "q0", "tags": ["a", "b"]}
    with pytest.raises(Invalid, match="no files for split 'test'"):
        load_hub_dataset(HubDataset(hub="Abirate/english_quotes", split="test"))


def test_bad_or_missing_hub_data_is_named(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror_hub_dataset(hub_cache, "me/broken", {"train.jsonl": b'{"a": 1}\n{"a": \n'})
    with pytest.raises(Invalid, match="file train.jsonl: line 2: not valid JSON"):
        load_hub_dataset(HubDataset(hub="me/broken"))
    with pytest.raises(HubUnavailable, match="not cached"):
        load_hub_dataset(HubDataset(hub="me/never-seen"))
    monkeypatch.setattr(settings, "max_upload_bytes", 5)
    with pytest.raises(TooLarge, match="FT_MAX_UPLOAD_BYTES"):
        load_hub_dataset(HubDataset(hub="me/broken"))


@pytest.mark.parametrize("name", ["https://evil.example/data", "../etc", "/abs/path", "a/b/c", "owner/na me"])
def test_only_dataset_ids_are_accepted(name: str) -> None:
    with pytest.raises(ValidationError, match="no URLs or paths"):
        HubDataset(hub=name)


def test_validate_reads_a_hub_dataset_like_an_upload(hub_cache: Path, tiny_model: Path) -> None:
    rows = "".join(json.dumps({"quote": f"Quote {i}.", "tags": ["life"]}) + "\n" for i in range(6)).encode()
    mirror_hub_dataset(hub_cache, "Abirate/english_quotes", {"quotes.jsonl": rows})
    spec = JobSpec.model_validate(
        {
            "base_model": TINY_MODEL,
            "dataset": {"hub": "Abirate/english_quotes", "split": "train"},
            "format": {"type": "template", "template": "{quote} ->: {tags}"},
            "training": {"batch_size": 2, "epochs": 2},
        }
    )
    caller = Caller(key_id="key_x", tenant="t", is_admin=False)
    with SessionLocal() as session:
        report = check_job_spec(session, caller, spec)
        missing = check_job_spec(session, caller, spec.model_copy(update={"dataset": HubDataset(hub="me/gone")}))
    assert report.ok and report.total_steps == 6 and report.examples[0].trained == "Quote 0. ->: ['life']</s>"
    assert missing.ok and missing.total_steps is None and "not cached" in missing.warnings[0]

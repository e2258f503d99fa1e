"""Hub reads are the tenant's: listed first, only the split's files fetched, its token or none, its allow-lists.

The Hub cannot be reached here, so tests/datasets/fake_hub.py serves its API from memory and records each call.
"""

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.checks import estimate
from app.checks.service import check_job_spec
from app.checks.tokenization import TOKENIZER_FILES, load_tokenizer
from app.core.config import Settings, settings
from app.core.db import SessionLocal
from app.core.errors import TooLarge
from app.datasets import access, tenant_access
from app.datasets.hub import list_hub_split
from app.fleet.prequantized import check_prequantized_base
from app.main import create_app
from app.models import Job
from app.spec.formats import HubDataset
from app.spec.job import JobSpec
from app.tenants.auth import Caller, create_key
from app.tenants.secrets import HUB_TOKEN, set_secret
from tests.conftest import TINY_MODEL
from tests.datasets.fake_hub import FakeHub, install
from worker import job_runner
from worker.training import data
from worker.training import model as modelling
from worker.training.errors import TrainingError

ROOT = Path(__file__).resolve().parents[2]
TENANT_TOKEN = "hf_tenant_token"
ROWS = "".join(json.dumps({"quote": f"Quote {i}.", "tags": ["life"]}) + "\n" for i in range(6)).encode()
REPO_FILES = {
    "README.md": b"# quotes",
    "data/train-00000-of-00001.jsonl": ROWS,
    "data/validation-00000-of-00001.jsonl": ROWS[:200],
    "data/test-00000-of-00001.jsonl": ROWS * 50,
}


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture
def tenant() -> str:
    return f"hub-{secrets.token_hex(4)}"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    cache = tmp_path / "hf-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return install(monkeypatch, cache)


def give_token(tenant: str, token: str = TENANT_TOKEN) -> None:
    with SessionLocal() as session:
        set_secret(session, tenant, HUB_TOKEN, token)
        session.commit()


def allow(monkeypatch: pytest.MonkeyPatch, tenant: str, **lists: list[str]) -> None:
    monkeypatch.setattr(settings, "tenant_access", {**settings.tenant_access, tenant: lists})


def job_spec(base_model: str = TINY_MODEL, hub: str = "team/quotes", split: str = "train") -> JobSpec:
    return JobSpec.model_validate(
        {
            "base_model": base_model,
            "dataset": {"hub": hub, "split": split},
            "format": {"type": "template", "template": "{quote} ->: {tags}"},
            "training": {"batch_size": 2, "epochs": 2},
        }
    )


def validate(tenant: str, spec: JobSpec):  # noqa: ANN201 - the EstimatedReport
    with SessionLocal() as session:
        return check_job_spec(session, Caller(key_id="key_x", tenant=tenant, is_admin=False), spec)


def test_only_the_splits_files_are_fetched_with_the_tenants_token(hub: FakeHub, tenant: str, tiny_model: Path) -> None:
    hub.add("team/quotes", REPO_FILES, token=TENANT_TOKEN)  # private: only the tenant's token reads it
    give_token(tenant)
    report = validate(tenant, job_spec())
    assert report.ok and report.total_steps == 6, report
    assert hub.downloads() == ["data/train-00000-of-00001.jsonl"]  # not the README, not the other splits
    assert [c.what for c in hub.calls] == ["info", "download"]  # listed first
    assert hub.tokens() == {TENANT_TOKEN}  # never the service's HF_TOKEN


def test_without_a_tenant_token_none_is_sent_and_a_cached_private_repo_stays_closed(
    hub: FakeHub, tenant: str, tiny_model: Path
) -> None:
    hub.add("public/quotes", REPO_FILES)
    assert validate(tenant, job_spec(hub="public/quotes")).ok
    hub.add("team/quotes", REPO_FILES, token=TENANT_TOKEN)
    owner = f"{tenant}-owner"
    give_token(owner)
    assert validate(owner, job_spec()).ok  # the owner's read puts the private files in the shared cache
    hub.calls.clear()
    report = validate(tenant, job_spec())
    assert not report.ok and report.problems[0].field == "dataset"
    assert "private or gated" in report.problems[0].message and "no Hub token" in report.problems[0].message
    assert hub.tokens() == {None} and hub.downloads() == []  # no token sent, and nothing served from the cache


def test_a_split_over_the_tenants_limit_is_refused_before_any_download(
    hub: FakeHub, tenant: str, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    hub.add("team/quotes", REPO_FILES)
    monkeypatch.setattr(settings, "tenant_limits", {tenant: {"max_upload_bytes": len(ROWS) - 1}})
    with SessionLocal() as session, pytest.raises(TooLarge, match=rf"FT_TENANT_LIMITS\['{tenant}'\]"):
        list_hub_split(HubDataset(hub="team/quotes"), tenant_access.access_for(session, tenant))
    report = validate(tenant, job_spec())
    assert not report.ok and "-byte limit" in report.problems[0].message
    assert validate(f"{tenant}-other", job_spec()).ok  # another tenant's limit is its own
    assert hub.downloads() == ["data/train-00000-of-00001.jsonl"]  # only the other tenant's


def test_a_large_split_is_listed_on_the_api_host_and_read_by_the_worker(
    hub: FakeHub, tenant: str, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    hub.add("team/quotes", REPO_FILES, token=TENANT_TOKEN)
    give_token(tenant)
    monkeypatch.setattr(settings, "hub_max_api_host_bytes", 100)
    report = validate(tenant, job_spec())
    assert report.ok and report.total_steps is None
    assert "FT_HUB_MAX_API_HOST_BYTES" in report.warnings[0] and "checked when the job starts" in report.warnings[0]
    assert hub.downloads() == []  # the API host listed it and fetched nothing
    with SessionLocal() as session:
        job = Job(tenant=tenant, status="running", spec=job_spec().model_dump(mode="json"))
        session.add(job)
        session.commit()
    with tenant_access.acting_for_job(job.id):  # as the worker's task runs a job: its tenant, its token, from SQL
        rows = data.load_hub_rows(HubDataset(hub="team/quotes"))
    assert len(rows) == 6 and rows[0]["quote"] == "Quote 0."
    assert hub.downloads() == ["data/train-00000-of-00001.jsonl"] and hub.tokens() == {TENANT_TOKEN}
    with pytest.raises(TrainingError, match="private or gated"):  # outside the job: no tenant, no token
        data.load_hub_rows(HubDataset(hub="team/quotes"))


def test_a_tenant_outside_its_allow_lists_is_refused(
    hub: FakeHub, tenant: str, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    hub.add("team/quotes", REPO_FILES)
    hub.add("evil/quotes", REPO_FILES)
    setting = f"FT_TENANT_ACCESS[{tenant!r}]"
    cases = {  # what the tenant may use, and a spec outside it
        "dataset": (["tiny-*"], job_spec(hub="evil/quotes")),
        "hub model": (["tiny-*"], job_spec(base_model="evil/model")),
        "local model": (["other-*"], job_spec(base_model=TINY_MODEL)),
    }
    for case, (local_models, spec) in cases.items():
        allow(monkeypatch, tenant, hub=["team/*"], local_models=local_models)
        report = validate(tenant, spec)
        field = "dataset" if case == "dataset" else "base_model"
        assert not report.ok and [p.field for p in report.problems] == [field], (case, report.problems)
        assert setting in report.problems[0].message, case
    assert "evil/quotes" not in {c.repo_id for c in hub.calls} and "evil/model" not in {c.repo_id for c in hub.calls}
    with SessionLocal() as session:
        key = create_key(session, "hub", tenant=tenant)
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as client:
        refused = client.post("/jobs", json=job_spec().model_dump(mode="json"))  # the local tiny model
    assert refused.status_code == 422 and setting in refused.json()["detail"], refused.json()
    # The worker checks again before loading anything.
    with access.acting_for(access.HubAccess(tenant)):
        with pytest.raises(TrainingError, match="not a model") as local:
            modelling.resolve_base_model(TINY_MODEL)
        with pytest.raises(TrainingError, match="not a Hub repo") as dataset:
            data.load_hub_rows(HubDataset(hub="evil/quotes"))
    assert local.value.type == dataset.value.type == "invalid_spec"


def test_patterns_per_tenant_and_the_defaults(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    allow(monkeypatch, tenant, hub=["My-Org/*"], local_models=[])
    assert access.hub_repo_refusal(tenant, "my-org/data", "dataset") is None  # Hub ids ignore case
    assert access.hub_repo_refusal(tenant, "my-org-evil/data", "dataset") is not None
    assert access.base_model_refusal(tenant, "tiny-llama", is_local=True) is not None  # an empty list allows none
    assert access.base_model_refusal("anyone", "tiny-llama", is_local=True) is None  # FT_LOCAL_MODELS_ALLOW=*
    monkeypatch.setattr(settings, "hub_allow", "org-a/*, org-b/*")
    assert access.hub_repo_refusal("anyone", "org-b/x", "dataset") is None
    assert "FT_HUB_ALLOW" in (access.hub_repo_refusal("anyone", "org-c/x", "dataset") or "")
    allow(monkeypatch, tenant, local_models=["tiny-*"])  # no `hub` list of its own: the default's
    assert access.hub_repo_refusal(tenant, "org-a/x", "dataset") is None


def test_a_hub_base_model_is_read_as_the_tenant(hub: FakeHub, tenant: str, tiny_model: Path) -> None:
    tokenizer_files = {n: (tiny_model / n).read_bytes() for n in TOKENIZER_FILES if (tiny_model / n).is_file()}
    weights = {"config.json": (tiny_model / "config.json").read_bytes(), "model.safetensors": b"weights"}
    extras = {"original/consolidated.safetensors": b"x", "pytorch_model.bin": b"x", "README.md": b"x"}
    hub.add("team/model", {**tokenizer_files, **weights, **extras}, repo_type="model", token=TENANT_TOKEN)
    give_token(tenant)
    with SessionLocal() as session:
        mine = tenant_access.access_for(session, tenant)
    assert load_tokenizer("team/model", mine).eos_token == "</s>"
    assert sorted(hub.downloads()) == sorted(tokenizer_files)  # the tokenizer's files, nothing else
    hub.calls.clear()
    with access.acting_for(mine):
        folder = Path(modelling.resolve_base_model("team/model"))
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert sorted(hub.downloads()) == sorted([*tokenizer_files, *weights])  # top-level config, weights, tokenizer
    assert hub.tokens() == {TENANT_TOKEN}
    with pytest.raises(TrainingError, match="private or gated") as anonymous:
        modelling.resolve_base_model("team/model")
    assert anonymous.value.type == "model_not_found"


def test_model_configs_are_read_as_the_tenant(hub: FakeHub, tenant: str) -> None:
    config = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}}
    hub.add("team/gptq", {"config.json": json.dumps(config).encode()}, repo_type="model", token=TENANT_TOKEN)
    owner = access.HubAccess(tenant, TENANT_TOKEN)
    assert estimate.model_config("team/gptq", owner)["model_type"] == "llama"
    with pytest.raises(estimate.EstimateUnavailable):  # the cached config is not another tenant's to read
        estimate.model_config("team/gptq", access.HubAccess(f"{tenant}-other"))
    gptq = job_spec(base_model="team/gptq")
    check_prequantized_base(gptq, estimate.config_reader(owner))
    assert gptq.quantization is None  # its config was read, with the owner's token
    unread = job_spec(base_model="team/gptq")
    check_prequantized_base(unread, estimate.config_reader(access.HubAccess(f"{tenant}-other")))
    assert unread.quantization is not None  # no token, no config: the worker decides
    assert hub.tokens() == {TENANT_TOKEN, None}


def test_acting_for_job_reads_the_jobs_tenant_and_token(tenant: str) -> None:
    give_token(tenant)
    with SessionLocal() as session:
        job = Job(tenant=tenant, status="queued", spec={"base_model": "m", "dataset": "d"})
        session.add(job)
        session.commit()
    assert access.current() == access.ANONYMOUS and access.current().hf_token is False
    with tenant_access.acting_for_job(job.id) as acting:
        assert access.current() == acting and (acting.tenant, acting.token) == (tenant, TENANT_TOKEN)
        assert acting.hf_token == TENANT_TOKEN and TENANT_TOKEN not in repr(acting)
    assert access.current() == access.ANONYMOUS


@pytest.fixture(autouse=True)
def _fresh_config_cache() -> Iterator[None]:
    estimate._hub_config.cache_clear()  # configs cached by an earlier test's fake Hub
    yield


def test_the_training_task_runs_the_recipe_as_the_jobs_tenant(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    give_token(tenant)
    with SessionLocal() as session:
        job = Job(tenant=tenant, status="queued", spec=job_spec().model_dump(mode="json"))
        session.add(job)
        session.commit()
    seen: list[access.HubAccess] = []

    def recipe_run(*_: object, **__: object) -> None:
        seen.append(access.current())
        raise TrainingError("invalid_spec", "stopped by the test")

    monkeypatch.setattr(job_runner.recipe, "run", recipe_run)
    assert job_runner.run_job(job.id, "test-worker") == "failed"
    assert [(a.tenant, a.token) for a in seen] == [(tenant, TENANT_TOKEN)]
    assert access.current() == access.ANONYMOUS  # and not left behind for the process's next task


def test_a_misspelt_allow_list_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="unknown allow-list"):
        Settings(tenant_access={"team": {"local_model": ["tiny-*"]}})  # would leave the team on the defaults

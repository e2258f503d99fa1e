"""The embedded serving backend's worker side (worker/serving.py), in-process: real Redis, migrated SQLite, and real
tiny models with random LoRA adapters stored as training stores them (Artifact rows, `.tar.gz` under FT_DATA_DIR).
"""

import json
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from alembic import command
from alembic.config import Config
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from app import storage
from app.broker import events
from app.broker.serving import ServingQueue, answer_key
from app.core.config import settings
from app.core.db import SessionLocal
from app.models import Artifact, Job
from app.spec.job import JobSpec
from worker import serving, serving_generation, tasks
from worker.artifacts import pack_directory
from worker.serving_models import ServingModels, adapter_bytes

ROOT = Path(__file__).resolve().parents[2]
DATASET = "ds_" + "a" * 24
PROMPT = "<|user|>\nThe quick brown fox</s>\n<|assistant|>\n"


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture(scope="module")
def loaded() -> ServingModels:
    """One loaded base shared by the module's tests, as one worker process keeps it."""
    return ServingModels(max_adapters=8, max_bytes=2**30)


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, loaded: ServingModels) -> Iterator[ServingQueue]:
    monkeypatch.setattr(settings, "training_queue", f"serve-worker-{secrets.token_hex(4)}")
    monkeypatch.setattr(serving, "models", loaded)
    client = events.redis_client()
    yield ServingQueue(client)
    for key in client.scan_iter(f"ft:serve:{settings.training_queue}:*"):
        client.delete(key)


@pytest.fixture
def tenant() -> str:
    return f"serve-{secrets.token_hex(4)}"


def spec(base: str, **extra: Any) -> dict[str, Any]:
    return {"base_model": base, "dataset": DATASET, "quantization": None, "lora": {"r": 8, "alpha": 16}, **extra}


def add_job(tenant: str, job_spec: dict[str, Any], status: str = "succeeded") -> str:
    with SessionLocal() as session:
        job = Job(tenant=tenant, status=status, spec=job_spec)
        session.add(job)
        session.commit()
        return job.id


def add_artifact(job_id: str, archive: Path, sha256: str, step: int | None = None) -> None:
    kind, name = ("adapter", "adapter") if step is None else ("checkpoint", f"checkpoint-{step}")
    with SessionLocal() as session:
        row = Artifact(job_id=job_id, name=name, kind=kind, path=storage.relative(archive), size_bytes=1, sha256=sha256)
        row.step = step
        session.add(row)
        session.commit()


def random_adapter(base: Path, out: Path, seed: int, dora: bool = False) -> Path:
    """A LoRA with random A and B (PEFT's default B is zero, which would change nothing), saved as training saves."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, use_dora=dora)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(4)  # a visible change on a random base
    peft_model.save_pretrained(out)
    return out


def trained_job(
    tenant: str, base: Path, tmp_path: Path, seed: int, status: str = "succeeded", dora: bool = False
) -> str:
    job_id = add_job(tenant, spec(base.name, **({"adapter": {"method": "dora"}} if dora else {})), status)
    adapter = random_adapter(base, tmp_path / f"adapter-{seed}", seed, dora)
    archive = storage.job_dir(job_id) / "adapter.tar.gz"
    _, sha256 = pack_directory(adapter, archive)
    add_artifact(job_id, archive, sha256)
    return job_id


def record(tenant: str, base: str, job_id: str | None = None, **data: Any) -> dict[str, Any]:
    """What the API queues (app/serving/backend.py ServingRequest.record())."""
    defaults = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None, "n": 1}
    return {
        "id": f"cmpl_{secrets.token_hex(12)}",
        "tenant": tenant,
        "model": base,
        "base_model": base,
        "job_id": job_id,
        "checkpoint_step": None,
        "prompt_tokens": 1,
        "deadline": time.time() + 60,
        "created_at": time.time(),
        **defaults,
        **data,
    }


def answer(queue: ServingQueue, call_id: str) -> list[dict[str, Any]]:
    return [json.loads(fields["data"]) for _, fields in queue.client.xrange(answer_key(call_id))]


def texts(entries: list[dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in entries:
        if e["type"] == "delta":
            out[e["index"]] = out.get(e["index"], "") + e["text"]
    return out


def served(queue: ServingQueue, *records: dict[str, Any]) -> list[list[dict[str, Any]]]:
    for r in records:
        queue.enqueue(r)
    assert tasks.serve().startswith("served")
    return [answer(queue, r["id"]) for r in records]


def test_two_adapters_and_the_base_answer_one_mixed_batch_each_row_with_its_own_adapter(
    queue: ServingQueue, tenant: str, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = trained_job(tenant, tiny_model, tmp_path, 1), trained_job(tenant, tiny_model, tmp_path, 2)
    requests = [record(tenant, tiny_model.name, first), record(tenant, tiny_model.name, second)]
    requests.append(record(tenant, tiny_model.name))
    with caplog.at_level(logging.INFO, logger="worker.serving"):
        together = [texts(a).get(0, "") for a in served(queue, *requests)]
    assert any(all(r["id"] in m for r in requests) for m in caplog.messages), "the three ran as one batch"
    alone = [texts(served(queue, {**r, "id": f"cmpl_{secrets.token_hex(12)}"})[0]).get(0, "") for r in requests]
    assert together == alone
    assert len(set(together)) == 3, f"each row had its own adapter (or none): {together}"


def reference(base: Path, adapter: Path, max_tokens: int) -> tuple[str, int]:
    """(text, prompt tokens): the adapter generating by itself, greedy, with PEFT and transformers alone."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True), ids["input_ids"].shape[1]


def test_deltas_concatenate_to_what_the_adapter_generates_by_itself(
    queue: ServingQueue, tenant: str, tiny_model: Path, tmp_path: Path
) -> None:
    job_id = trained_job(tenant, tiny_model, tmp_path, 3)
    (entries,) = served(queue, record(tenant, tiny_model.name, job_id, max_tokens=20))
    expected, prompt_tokens = reference(tiny_model, tmp_path / "adapter-3", 20)
    assert sum(e["type"] == "delta" for e in entries) > 1, "streamed token by token"
    assert texts(entries).get(0, "") == expected
    usage = entries[-1]
    assert usage["type"] == "usage" and usage["prompt_tokens"] == prompt_tokens


def test_a_dora_adapter_runs_in_a_batch_of_its_own_and_answers_as_by_itself(
    queue: ServingQueue, tenant: str, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PEFT cannot mix DoRA adapters in one batch: its requests go alone, the rest still batch together."""
    dora, lora = trained_job(tenant, tiny_model, tmp_path, 13, dora=True), trained_job(tenant, tiny_model, tmp_path, 3)
    requests = [record(tenant, tiny_model.name, dora), record(tenant, tiny_model.name, lora)]
    with caplog.at_level(logging.INFO, logger="worker.serving"):
        first, second = served(queue, *requests)
    batches = [m for m in caplog.messages if m.startswith("serving: cmpl_")]
    assert len(batches) == 2 and requests[0]["id"] in batches[0] and requests[1]["id"] not in batches[0]
    assert texts(first).get(0, "") == reference(tiny_model, tmp_path / "adapter-13", 12)[0]
    assert texts(second).get(0, "") == reference(tiny_model, tmp_path / "adapter-3", 12)[0]


def test_stop_strings_cut_the_text_max_tokens_ends_by_length_and_n_gives_n_choices(
    queue: ServingQueue, tenant: str, tiny_model: Path, tmp_path: Path
) -> None:
    trained_job(tenant, tiny_model, tmp_path, 4)  # the base is the tenant's to call once it trained on it
    (plain,) = served(queue, record(tenant, tiny_model.name, max_tokens=16))
    full = texts(plain)[0]
    stop = full[6:9]
    cut, short, several = served(
        queue,
        record(tenant, tiny_model.name, max_tokens=16, stop=[stop, "never-seen"]),
        record(tenant, tiny_model.name, max_tokens=3),
        record(tenant, tiny_model.name, max_tokens=5, n=3, temperature=1.0),
    )
    assert texts(cut)[0] == full[: full.find(stop)] and stop not in "".join(e.get("text", "") for e in cut)
    assert [e["finish_reason"] for e in cut if e["type"] == "done"] == ["stop"]
    assert [e["finish_reason"] for e in short if e["type"] == "done"] == ["length"]
    assert short[-1] == {"type": "usage", "prompt_tokens": plain[-1]["prompt_tokens"], "completion_tokens": 3}
    assert sorted(e["index"] for e in several if e["type"] == "done") == [0, 1, 2]
    assert several[-1]["type"] == "usage" and 3 <= several[-1]["completion_tokens"] <= 15


def test_a_seed_makes_a_sampled_completion_repeat(queue: ServingQueue, tenant: str, tiny_model: Path, tmp_path: Path):
    trained_job(tenant, tiny_model, tmp_path, 5)
    sampled = {"temperature": 1.0, "max_tokens": 16}
    runs = served(
        queue,
        record(tenant, tiny_model.name, seed=7, **sampled),
        record(tenant, tiny_model.name, seed=7, **sampled),
        record(tenant, tiny_model.name, seed=8, **sampled),
    )
    first, again, other = (texts(r).get(0, "") for r in runs)
    assert first == again and first != other


def test_a_completion_past_its_deadline_mid_generation_ends_with_a_timeout(
    queue: ServingQueue, tenant: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generation's clock jumps an hour after its third token: the request's deadline passes mid-generation."""
    job_id = trained_job(tenant, tiny_model, tmp_path, 6)
    steps = []

    def clock() -> float:
        steps.append(1)
        return time.time() + (3600 if len(steps) > 3 else 0)

    monkeypatch.setattr(serving_generation, "time", SimpleNamespace(time=clock))
    (entries,) = served(queue, record(tenant, tiny_model.name, job_id, max_tokens=100))
    assert entries[-1]["type"] == "error" and entries[-1]["kind"] == "timeout", entries[-1]
    assert "deadline" in entries[-1]["message"] and not any(e["type"] in ("usage", "done") for e in entries)
    assert len(steps) == 4, "generation stopped at the step the deadline had passed"


def test_refused_requests_get_an_error_entry_and_nothing_is_generated(
    queue: ServingQueue, tenant: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = ServingModels(max_adapters=8, max_bytes=2**30)
    monkeypatch.setattr(serving, "models", fresh)
    theirs = trained_job(f"{tenant}-other", tiny_model, tmp_path, 7)
    mine = trained_job(tenant, tiny_model, tmp_path, 12)
    running = trained_job(tenant, tiny_model, tmp_path, 8, status="running")
    tampered = add_job(tenant, spec(tiny_model.name))
    archive = storage.job_dir(tampered) / "adapter.tar.gz"
    pack_directory(random_adapter(tiny_model, tmp_path / "tampered", 9), archive)
    add_artifact(tampered, archive, "0" * 64)
    add_job(tenant, spec("some-org/private-model"), status="failed")
    classifier = add_job(tenant, spec(tiny_model.name, format={"type": "classification", "text": "t", "label": "l"}))
    base = tiny_model.name
    cases = {
        "has no job": record(tenant, base, theirs),  # another tenant's adapter
        "is running": record(tenant, base, running),
        "checksum": record(tenant, base, tampered),
        "/predict": record(tenant, base, classifier),
        "is not a job_": record(tenant, base, "../../etc"),
        "job on base model 'tiny-never-trained'": record(tenant, "tiny-never-trained"),  # a base it never used
        "no succeeded causal LM job": record(tenant, "some-org/private-model"),  # a Hub base its job never read
        "max_tokens": record(tenant, base, mine, max_tokens=settings.serving_max_tokens + 1),
        "not 'tiny-other'": record(tenant, "tiny-other", mine),  # the record's base is not the job's
        "checkpoint at step 3": record(tenant, base, mine, checkpoint_step=3),
    }
    answers = served(queue, *cases.values())
    for (why, _), entries in zip(cases.items(), answers, strict=True):
        assert len(entries) == 1 and entries[0]["type"] == "error", (why, entries)
        assert entries[0]["kind"] == "invalid_request" and why in entries[0]["message"], (why, entries[0])
    assert fresh.base_model is None, "no model was loaded for a refused request"
    assert not list((storage.data_root() / "cache" / "adapters").glob(f"{tampered}-*"))
    forged = record(tenant, base, running, id="../../x")
    queue.enqueue(forged)
    assert tasks.serve() == "served 1" and answer(queue, "../../x") == [], "a forged id gets no stream"


def test_tenants_are_served_round_robin(
    queue: ServingQueue, tenant: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet = f"{tenant}-quiet"
    trained_job(tenant, tiny_model, tmp_path, 10)
    trained_job(quiet, tiny_model, tmp_path, 11)
    monkeypatch.setattr(settings, "serving_max_batch", 2)
    busy = [record(tenant, tiny_model.name, max_tokens=2) for _ in range(4)]
    single = record(quiet, tiny_model.name, max_tokens=2)
    order = []

    def generate(model: Any, tokenizer: Any, batch: list[Any], publish: Any, finish: Any) -> None:
        order.append([c.id for c in batch])
        for c in batch:
            finish(c.id)

    monkeypatch.setattr(serving, "generate", generate)
    served(queue, *busy, single)
    assert order[0] == [busy[0]["id"], single["id"]], "the quiet tenant's one request went in the first batch"
    assert [i for b in order for i in b] == [busy[0]["id"], single["id"], *(b["id"] for b in busy[1:])]


def test_the_adapter_lru_drops_the_least_recently_used_beyond_its_bounds(tiny_model: Path, tmp_path: Path) -> None:
    dirs = {name: random_adapter(tiny_model, tmp_path / name, seed) for seed, name in enumerate("abc")}
    models = ServingModels(max_adapters=2, max_bytes=2**30)
    models.base(JobSpec.model_validate(spec(tiny_model.name)))
    for name in "aba":
        models.use({name: dirs[name]})
    models.use({"c": dirs["c"]})  # b was used least recently
    assert list(models.adapters) == ["a", "c"] and set(models.model.peft_config) == {"a", "c"}
    one = adapter_bytes(models.model, "a")
    assert one > 0 and models.adapters["a"] == one
    models.max_adapters, models.max_bytes = 8, int(one * 1.5)
    models.use({"b": dirs["b"]})  # two adapters would exceed the memory bound: only the newest stays
    assert list(models.adapters) == ["b"] and set(models.model.peft_config) == {"b"}

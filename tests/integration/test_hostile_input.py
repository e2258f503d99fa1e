"""Hostile or careless input on the real stack: each gets a clear 4xx, and nothing it aims at ever happens."""

import gzip
import io
import json
import secrets
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from celery import Celery
from sqlalchemy.orm import Session

from app.broker.tasks import TRAIN_TASK
from app.core.db import make_engine
from app.models import Job, utcnow
from tests.conftest import MODELS_DIR, TINY_MODEL
from tests.integration.conftest import Stack
from tests.integration.replicas import cancel_queued, stack_database_url

ROWS = [{"quote": f"quote number {i}", "tags": "a, b", "text": f"text {i}"} for i in range(16)]


def upload(client: httpx.Client, filename: str, content: bytes) -> httpx.Response:
    return client.post("/datasets", files={"file": (filename, content)})


def spec(dataset: str | dict, **overrides: object) -> dict:
    base = {
        "base_model": TINY_MODEL,
        "dataset": dataset,
        "quantization": None,
        "training": {"max_steps": 1, "batch_size": 2, "max_seq_length": 64, "optimizer": "adamw_torch"},
    }
    return {**base, **overrides}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    tenant = f"hostile-{stack.name}-{secrets.token_hex(3)}"
    with stack.client_for(stack.make_key("hostile", tenant=tenant)) as c:
        c.headers["X-Test-Tenant"] = tenant
        yield c
    cancel_queued(stack, [tenant])


@pytest.fixture(scope="module")
def dataset(client: httpx.Client) -> dict:
    content = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    response = upload(client, "rows.jsonl", content)
    assert response.status_code in (200, 201), response.text
    return response.json()


def assert_refused(response: httpx.Response, statuses: tuple[int, ...], *words: str) -> None:
    """The status is one of `statuses` and the JSON error (ours, or OpenAI's under /v1) says all of `words`."""
    assert response.status_code in statuses, (response.request.url, response.status_code, response.text)
    body = response.json()
    detail = body["detail"] if "detail" in body else body["error"]["message"]
    assert detail and all(w in detail for w in words), (words, detail)


def assert_spec_refused(client: httpx.Client, body: dict, *words: str) -> None:
    """POST /jobs says 422; POST /jobs/validate says 422, or ok=false with the problem."""
    assert_refused(client.post("/jobs", json=body), (422,), *words)
    report = client.post("/jobs/validate", json=body)
    if report.status_code == 200:
        problems = " ".join(f"{p.get('field')}: {p['message']}" for p in report.json()["problems"])
        assert not report.json()["ok"] and all(w in problems for w in words), (words, problems)
    else:
        assert_refused(report, (422,), *words)


def path_part(text: str) -> str:
    # Dots too: a client would otherwise resolve `..` itself, and the server would never see it.
    return quote(text, safe="").replace(".", "%2E")


@pytest.fixture(scope="module")
def queued_job(stack: Stack, client: httpx.Client, dataset: dict) -> str:
    """A job of this tenant that stays queued: recorded as sent, on no queue, so no worker ever trains it."""
    engine = make_engine(stack_database_url(stack))
    with Session(engine) as session:
        tenant = client.headers["X-Test-Tenant"]
        job = Job(tenant=tenant, status="queued", spec=spec(dataset["id"]), enqueued_at=utcnow())
        session.add(job)
        session.commit()
        job_id = job.id
    engine.dispose()
    return job_id


ODD_IDS = [
    "../../etc/passwd",
    "..",
    "job_../../../x",
    "job_000000000000000000000000/../../x",
    "job_\x00",
    "%00",
    "\u0130\u017f\u212a",
    "job_" + "a" * 4000,
    "' OR '1'='1",
    "job_00000000000000000000000g",
    "ds_000000000000000000000000\n",
]


def test_odd_ids_are_404_never_500(client: httpx.Client, dataset: dict) -> None:
    for odd in ODD_IDS:
        encoded = path_part(odd)
        for path in (f"/jobs/{encoded}", f"/jobs/{encoded}/metrics", f"/datasets/{encoded}", f"/v1/files/{encoded}"):
            assert_refused(client.get(path), (404,))
        assert_refused(client.post(f"/jobs/{encoded}/cancel"), (404,))
    listed = client.get("/v1/files", params={"after": "ds_\x00"})
    assert listed.status_code == 404 and listed.json()["error"]["message"]


def test_odd_artifact_names_are_404(client: httpx.Client, queued_job: str) -> None:
    for name in ("../../../../etc/passwd", "..", "adapter\x00", "adapter/../adapter", "ADAPTER", "/etc", "x" * 500):
        assert_refused(client.get(f"/jobs/{queued_job}/artifacts/{path_part(name)}"), (404,))
    assert_refused(client.get(f"/jobs/{queued_job}/artifacts/adapter"), (409,), "adapter")


def test_numbers_beyond_the_database_are_422(client: httpx.Client, queued_job: str) -> None:
    # Found by the fuzzer: a step past 32 bits reached PostgreSQL's integer column as a 500.
    for since_step in (2**31, 5_826_982_542, 10**30):
        response = client.get(f"/jobs/{queued_job}/metrics", params={"since_step": since_step, "format": "csv"})
        assert_refused(response, (422,), "since_step")


def test_odd_file_names_are_cleaned_and_never_used_as_paths(stack: Stack, client: httpx.Client) -> None:
    data_dir = Path(stack.local.env["FT_DATA_DIR"]).resolve()
    names = [
        "../../../escape.jsonl",
        "..\\..\\escape.jsonl",
        "/etc/escape.jsonl",
        "$(touch escape).jsonl",
        "\u202eevil\u202d.jsonl",
        "CON.jsonl",
        "." * 300 + ".jsonl",
        "x" * 1000 + ".jsonl",
    ]
    for i, name in enumerate(names):
        content = json.dumps({"text": f"odd name {i}"}).encode() + b"\n"
        for response in (
            upload(client, name, content),
            client.post("/v1/files", files={"file": (name, content + b"\n")}, data={"purpose": "fine-tune"}),
        ):
            assert response.status_code in (200, 201), (name, response.text)
            stored = response.json()["filename"]
            assert "/" not in stored and "\\" not in stored and ".." not in stored and len(stored) <= 200, stored
    assert not list(data_dir.parent.rglob("escape.jsonl")) and not Path("/etc/escape.jsonl").exists()
    assert (
        client.post("/datasets", files={"file": ("a.jsonl", b'{"a": 1}\n')}, data={"name": "bad\x00name"}).status_code
        == 422
    )


TEMPLATES = [
    "{quote.__class__}",
    "{quote.__class__.__init__.__globals__}",
    "{quote[0]}",
    "{0.__class__}",
    "{quote!r}",
    "{quote:>{tags}}",
    "{quote} {}",
]


def test_templates_cannot_reach_python_internals(client: httpx.Client, dataset: dict) -> None:
    for template in TEMPLATES:
        for fmt in ({"type": "template", "template": template}, {"type": "prompt_completion", "prompt": template}):
            assert_spec_refused(client, spec(dataset["id"], format=fmt), "format.")


def test_chat_templates_run_sandboxed(client: httpx.Client) -> None:
    chats = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 4
    chat_data = upload(client, "chats.jsonl", "".join(json.dumps(c) + "\n" for c in chats).encode()).json()
    escape = "{% generation %}{{ ''.__class__.__mro__[1].__subclasses__() }}{% endgeneration %}"
    fmt = {"type": "chat", "field": "messages", "chat_template": escape}
    assert_spec_refused(client, spec(chat_data["id"], format=fmt), "unsafe")


def make_model_dir(name: str, edit: Callable[[Path], None]) -> str:
    target = MODELS_DIR / name
    shutil.copytree(MODELS_DIR / TINY_MODEL, target)
    edit(target)
    return name


def test_base_models_outside_models_dir_with_remote_code_or_pickles_are_refused(
    tiny_model: Path, client: httpx.Client, dataset: dict, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    token = secrets.token_hex(3)

    def remote_code(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (d / "config.json").write_text(json.dumps(config))
        (d / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")

    def pickle_only(d: Path) -> None:
        for weights in d.glob("*.safetensors"):
            weights.unlink()
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04c__builtin__\nopen\n" + str(marker).encode())

    outside = tmp_path / "outside-model"
    shutil.copytree(tiny_model, outside)
    (MODELS_DIR / f"escape-{token}").symlink_to(outside, target_is_directory=True)
    cases = {
        make_model_dir(f"remote-code-{token}", remote_code): "custom code",
        make_model_dir(f"pickle-only-{token}", pickle_only): "no .safetensors",
        f"escape-{token}": "outside",
        "https://huggingface.co/owner/model": "hub id",
        "file:///etc/passwd": "hub id",
        "/etc": "hub id",
        "../tiny-llama": "hub id",
        "~/models": "hub id",
        "tiny-llama/../../x": "hub id",
        "owner\\model": "hub id",
    }
    try:
        for base_model, words in cases.items():
            assert_spec_refused(client, spec(dataset["id"], base_model=base_model), "base_model", words)
    finally:
        for name in (f"remote-code-{token}", f"pickle-only-{token}"):
            shutil.rmtree(MODELS_DIR / name, ignore_errors=True)
        (MODELS_DIR / f"escape-{token}").unlink()
    assert not marker.exists(), "no custom code or pickle was ever loaded"


def test_hub_dataset_names_must_be_ids(client: httpx.Client) -> None:
    for name in ("https://evil.example/data", "../../etc", "/etc/passwd", "owner/name/extra", "a" * 300, "owner/.."):
        assert_spec_refused(client, spec({"hub": name}), "dataset")


def test_compressed_uploads_and_bodies_are_refused(client: httpx.Client) -> None:
    bomb = gzip.compress(b'{"text": "a"}\n' * 2_000_000)  # 28 MB of rows in ~30 kB
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rows.jsonl", b'{"text": "a"}\n' * 100_000)
    for filename, content in (("rows.jsonl.gz", bomb), ("rows.jsonl", bomb), ("rows.zip", archive.getvalue())):
        assert_refused(upload(client, filename, content), (415,), "compressed")
        openai = client.post("/v1/files", files={"file": (filename, content)}, data={"purpose": "fine-tune"})
        assert openai.status_code == 400 and "compressed" in openai.json()["error"]["message"]
    gzipped = gzip.compress(json.dumps(spec("ds_x")).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    assert_refused(client.post("/jobs", content=gzipped, headers=headers), (415,), "Content-Encoding")
    rows = [{"text": "0" * 1_000_000} for _ in range(600)]  # 600 MB decoded, a few hundred kB stored
    parquet = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), parquet, compression="zstd", use_dictionary=False)
    assert_refused(upload(client, "bomb.parquet", parquet.getvalue()), (413,), "decode")


def test_huge_and_deep_json_bodies(client: httpx.Client) -> None:
    huge = json.dumps({**spec("ds_x"), "name": "x" * 3_000_000})
    refused = client.post("/jobs", content=huge, headers={"content-type": "application/json"})
    assert_refused(refused, (413,), "FT_MAX_REQUEST_BODY_BYTES")
    deep = "[" * 200_000 + "]" * 200_000
    for path in ("/jobs", "/jobs/validate", "/v1/fine_tuning/jobs"):
        response = client.post(path, content=deep, headers={"content-type": "application/json"})
        assert response.status_code in (400, 422), (path, response.status_code, response.text[:200])


class OpensAFile:
    """Pickled, this opens (creates) a file when loaded: proof, if it ever appears, that pickle was trusted."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_the_worker_refuses_pickled_messages(stack: Stack, queued_job: str, tmp_path: Path) -> None:
    from worker.celery_app import app as worker_app

    assert worker_app.conf.accept_content == ["json"] and worker_app.conf.task_serializer == "json"
    job_id = queued_job  # queued, and named by no message but the pickled ones below
    engine = make_engine(stack_database_url(stack))
    marker = tmp_path / "unpickled"
    sender = Celery("hostile-sender", broker=stack.local.env["FT_REDIS_URL"])
    sender.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    queue = stack.local.env["FT_TRAINING_QUEUE"]
    log = stack.local.log_dir / "worker.log"
    before = log.read_text().count("ContentDisallowed")
    sender.send_task(TRAIN_TASK, args=[job_id], queue=queue, serializer="pickle")
    sender.send_task(TRAIN_TASK, args=[job_id], kwargs={"x": OpensAFile(marker)}, queue=queue, serializer="pickle")
    deadline = time.monotonic() + 240  # behind whatever the one worker is training now
    while log.read_text().count("ContentDisallowed") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert log.read_text().count("ContentDisallowed") >= before + 2, log.read_text()[-3000:]
    assert not marker.exists(), "a pickled message was loaded"
    with Session(engine) as session:
        assert session.get(Job, job_id).status == "queued", "a pickled message started the job"
    engine.dispose()

"""The API's contract at its edges: auth, validation, unknown ids, wrong states, health."""

import httpx

from tests.integration.conftest import Stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl


def _dataset(stack: Stack) -> dict:
    return stack.upload("quotes.jsonl", quotes_jsonl())


def test_health_needs_no_key(stack: Stack) -> None:
    with stack.anonymous() as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        ready = anon.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_missing_or_wrong_key_is_401(stack: Stack) -> None:
    with stack.anonymous() as anon:
        for path in ("/jobs", "/datasets", "/jobs/job_000000000000000000000000"):
            response = anon.get(path)
            assert response.status_code == 401 and "Authorization: Bearer" in response.json()["detail"]
        bad = anon.get("/jobs", headers={"Authorization": "Bearer ft_abc_notakey"})
        assert bad.status_code == 401 and "invalid" in bad.json()["detail"]


def test_unknown_job_and_dataset_are_404(stack: Stack) -> None:
    for path in (
        "/jobs/job_doesnotexist",
        "/jobs/job_doesnotexist/metrics",
        "/datasets/ds_nope",
        "/jobs/job_doesnotexist/artifacts/adapter",
        "/jobs/../../etc/passwd",
    ):
        response = stack.client.get(path)
        assert response.status_code == 404, path
        assert response.json()["detail"]


def test_bad_specs_are_422_naming_the_field(stack: Stack) -> None:
    dataset = _dataset(stack)
    cases = {
        "lora.r": {**qlora_spec(dataset["id"]), "lora": {"r": 0}},
        "surprise": {**qlora_spec(dataset["id"]), "surprise": True},
        "training.optimizer": {**qlora_spec(dataset["id"]), "training": {"optimizer": "adam9000"}},
        "base_model": {**qlora_spec(dataset["id"]), "base_model": "https://evil.example/model"},
        "format.template": {**qlora_spec(dataset["id"]), "format": {"type": "template", "template": "{x.__class__}"}},
        "'missing_column'": {
            **qlora_spec(dataset["id"]),
            "format": {"type": "template", "template": "{quote} {missing_column}"},
        },
        "dataset": qlora_spec("ds_000000000000000000000000"),
    }
    for field, spec in cases.items():
        response = stack.client.post("/jobs", json=spec)
        assert response.status_code == 422, (field, response.text)
        assert field in response.json()["detail"], (field, response.json())
    assert (
        stack.client.post("/jobs", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )


def test_idempotency_key_returns_the_same_job(stack: Stack) -> None:
    dataset = _dataset(stack)
    spec = qlora_spec(dataset["id"], max_steps=1)
    headers = {"Idempotency-Key": f"retry-{stack.name}"}
    first = stack.client.post("/jobs", json=spec, headers=headers)
    again = stack.client.post("/jobs", json=spec, headers=headers)
    assert first.status_code == 201 and again.json()["id"] == first.json()["id"]
    stack.wait(first.json()["id"])


def test_adapter_before_success_is_409_and_lists_paginate(stack: Stack) -> None:
    dataset = _dataset(stack)
    job = stack.client.post("/jobs", json=qlora_spec(dataset["id"], max_steps=2)).json()
    early = stack.client.get(f"/jobs/{job['id']}/artifacts/adapter")
    assert early.status_code in (409, 200)  # 200 only if the worker was already done
    if early.status_code == 409:
        assert "adapter" in early.json()["detail"]
    stack.wait(job["id"])
    page = stack.client.get("/jobs", params={"limit": 1}).json()
    assert len(page["data"]) == 1 and page["next_cursor"]
    second = stack.client.get("/jobs", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert second["data"][0]["id"] != page["data"][0]["id"]
    assert stack.client.get("/jobs", params={"cursor": "garbage"}).status_code == 422
    succeeded = stack.client.get("/jobs", params={"status": "succeeded"}).json()["data"]
    assert succeeded and all(j["status"] == "succeeded" for j in succeeded)
    cancel_done = stack.client.post(f"/jobs/{job['id']}/cancel")
    assert cancel_done.status_code == 409 and "already" in cancel_done.json()["detail"]


def test_other_tenant_sees_nothing(stack: Stack) -> None:
    dataset = _dataset(stack)
    job = stack.client.post("/jobs", json=qlora_spec(dataset["id"], max_steps=1)).json()
    with stack.client_for(stack.make_key("intruder", tenant="other-team")) as other:
        assert other.get(f"/jobs/{job['id']}").status_code == 404
        assert other.get(f"/datasets/{dataset['id']}").status_code == 404
        assert other.get("/jobs").json()["data"] == []
        refused = other.post("/jobs", json=qlora_spec(dataset["id"]))
        assert refused.status_code == 422 and "not found" in refused.json()["detail"]
    stack.wait(job["id"])


def test_job_failures_are_reported_not_stuck(stack: Stack) -> None:
    # One row lacks a column the header has: refused at submit, named by its row (more in test_data_path.py).
    rows = quotes_jsonl(2) + b'\n{"quote": "no tags here"}\n'
    dataset = stack.upload("partial.jsonl", rows)
    refused = stack.client.post("/jobs", json=qlora_spec(dataset["id"], max_steps=2))
    assert refused.status_code == 422 and "row 9" in refused.json()["detail"], refused.text
    # What the API cannot see (a hub dataset it cannot fetch) fails on the worker, reported in words.
    hub_spec = {**qlora_spec(dataset["id"], max_steps=2), "dataset": {"hub": "nobody/no-such-quotes"}}
    job = stack.client.post("/jobs", json=hub_spec).json()
    good = _dataset(stack)
    unknown_model = stack.client.post("/jobs", json={**qlora_spec(good["id"]), "base_model": "nobody/no-such-model"})
    job = stack.wait(job["id"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == "dataset_not_found" and "nobody/no-such-quotes" in job["error"]["message"]
    failed = stack.wait(unknown_model.json()["id"])
    assert failed["status"] == "failed" and failed["error"]["type"] == "model_not_found", failed["error"]
    assert "nobody/no-such-model" in failed["error"]["message"] and "Traceback" not in failed["error"]["message"]


def test_cancel_a_queued_job(stack: Stack) -> None:
    dataset = _dataset(stack)
    # Occupy the single worker, then cancel the job queued behind it.
    busy = stack.client.post("/jobs", json=qlora_spec(dataset["id"], max_steps=15)).json()
    queued = stack.client.post("/jobs", json=qlora_spec(dataset["id"], max_steps=15)).json()
    cancelled = stack.client.post(f"/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert stack.wait(busy["id"])["status"] == "succeeded"
    assert stack.client.get(f"/jobs/{queued['id']}").json()["status"] == "cancelled"


def test_uploads_refuse_bad_files(stack: Stack) -> None:
    cases = {
        ("broken.jsonl", b'{"a": 1}\n{"a": \n'): "line 2",
        ("ragged.csv", b"a,b\n1,2\n3\n"): "line 3",
        ("empty.jsonl", b""): "empty",
        ("latin1.csv", "text\ncaf\u00e9\n".encode("latin-1")): "UTF-8",
        ("weird.bin", b"\x00\x01\x02"): "format",
    }
    for (filename, content), words in cases.items():
        response = stack.client.post("/datasets", files={"file": (filename, content)})
        assert response.status_code in (415, 422), (filename, response.text)
        assert words in response.json()["detail"], (filename, response.json())
    csv_dataset = stack.upload("sheet.csv", b"quote,tags\nhello,greeting\n")
    again = stack.client.post("/datasets", files={"file": ("again.csv", b"quote,tags\nhello,greeting\n")})
    assert again.status_code == 200 and again.json()["id"] == csv_dataset["id"]
    listed = stack.client.get("/datasets").json()["data"]
    assert csv_dataset["id"] in [d["id"] for d in listed]


def test_openapi_documents_every_spec_field(stack: Stack) -> None:
    schema = httpx.get(f"{stack.local.base_url}/openapi.json").json()
    training = schema["components"]["schemas"]["Training"]["properties"]
    assert all(prop.get("description") for prop in training.values())

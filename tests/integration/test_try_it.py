"""Try what you trained: base vs adapter evaluation (after training and on demand), side-by-side generation, merged
export, lineage, clone."""

import io
import json
import random
import tarfile
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.integration.conftest import ONE_DATABASE, Stack

pytestmark = ONE_DATABASE

POSITIVE = ["wonderful", "great", "moving", "happy", "love", "excellent", "amazing", "fantastic", "good"]
NEGATIVE = ["terrible", "slow", "awful", "boring", "poor", "bad", "sad", "hate"]


def sentiment_jsonl(rows: int = 80) -> bytes:
    """A label task a tiny model learns in a few dozen steps: each class has its own words."""
    rng = random.Random(0)
    lines = []
    for i in range(rows):
        label = "positive" if i % 2 == 0 else "negative"
        review = " ".join(rng.sample(POSITIVE if label == "positive" else NEGATIVE, 3))
        lines.append(json.dumps({"review": review, "label": label}))
    return "\n".join(lines).encode()


def sentiment_spec(dataset_id: str) -> dict:
    return {
        "name": "sentiment",
        "base_model": "tiny-llama",
        "dataset": dataset_id,
        "format": {"type": "template", "template": "review: {review} -> sentiment: {label}"},
        "quantization": None,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "max_steps": 40,
            "learning_rate": 5e-3,
            "batch_size": 8,
            "eval_fraction": 0.2,
            "evaluate_base": True,
            "optimizer": "adamw_torch",
            "gradient_checkpointing": False,
            "checkpoint_every_steps": None,
        },
    }


def _poll(stack: Stack, url: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = stack.client.get(url).json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{url} still {body['status']} after {timeout}s")


def test_try_what_you_trained(stack: Stack, tiny_model: Path, tmp_path: Path) -> None:
    dataset = stack.upload("sentiment.jsonl", sentiment_jsonl())
    job = stack.client.post("/jobs", json=sentiment_spec(dataset["id"])).json()
    job = stack.wait(job["id"], timeout=900)
    assert job["status"] == "succeeded", job["error"]

    # Lineage: what it ran with.
    lineage = job["lineage"]
    assert lineage["dataset_sha256"] == dataset["sha256"] and len(lineage["format_sha256"]) == 64
    assert lineage["seed"] == 42 and lineage["device"] == "cpu"
    assert {"torch", "transformers", "peft", "bitsandbytes", "trl"} <= set(lineage["libraries"])

    # Evaluation: the adapter answers the label task, the base model does not.
    evaluation = stack.client.get(f"/jobs/{job['id']}/metrics").json()["evaluation"]
    assert evaluation == job["evaluation"] and evaluation["label_examples"] == 16
    base, adapter = evaluation["base"], evaluation["adapter"]
    assert adapter["accuracy"] >= base["accuracy"] + 0.5, evaluation
    assert adapter["eval_loss"] < base["eval_loss"] and adapter["perplexity"] < base["perplexity"]

    # The adapter carries a model card.
    download = stack.client.get(f"/jobs/{job['id']}/artifacts/adapter")
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        assert {"README.md", "loss_curve.png"} <= set(tar.getnames())
        card = tar.extractfile("README.md").read().decode()
    assert dataset["sha256"] in card and "## Base model vs adapter" in card

    # Generation: the raw input goes through the job's template; side by side, on a worker.
    answer = stack.client.post(
        f"/jobs/{job['id']}/generate", json={"prompts": ["great happy love"], "max_new_tokens": 4}
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    assert result["prompt"] == "great happy love" and result["formatted_prompt"].endswith("-> sentiment:")
    assert result["adapter"].strip().startswith("positive") and result["base"] != result["adapter"]
    queued = stack.client.post(
        f"/jobs/{job['id']}/generate", params={"wait": "false"}, json={"prompts": ["awful sad bad"] * 3}
    )
    assert queued.status_code == 202 and queued.json()["status"] in ("queued", "running")
    polled = _poll(stack, queued.json()["poll_url"])
    assert polled["status"] == "succeeded" and polled["results"][2]["adapter"].strip().startswith("negative")

    _assert_evaluation_on_demand(stack, job["id"])

    # Merged export: loads with AutoModelForCausalLM and matches base + adapter.
    export = stack.client.post(f"/jobs/{job['id']}/exports", json={"kind": "merged"})
    assert export.status_code == 202 and export.json()["kind"] == "merged", export.text
    done = _poll(stack, f"/jobs/{job['id']}/exports/{export.json()['id']}")
    assert done["status"] == "succeeded", done
    names = [a["name"] for a in stack.client.get(f"/jobs/{job['id']}/artifacts").json()["data"]]
    assert "merged" in names
    _assert_merged_matches(stack, job["id"], tiny_model, tmp_path)

    # Clone with overrides: a new queued job (cancelled here to keep the worker free).
    clone = stack.client.post(f"/jobs/{job['id']}/clone", json={"training": {"seed": 7}})
    assert clone.status_code == 201, clone.text
    assert clone.json()["spec"]["training"]["seed"] == 7 and clone.json()["spec"]["format"] == job["spec"]["format"]
    stack.client.post(f"/jobs/{clone.json()['id']}/cancel")
    bad = stack.client.post(f"/jobs/{job['id']}/clone", json={"training": {"learning_rate": -1}})
    assert bad.status_code == 422 and "training.learning_rate" in bad.json()["detail"]

    # None of that loaded a model into the API process.
    maps = Path(f"/proc/{stack.local.processes['api'].pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/lib" not in maps


def _assert_evaluation_on_demand(stack: Stack, job_id: str) -> None:
    """POST /jobs/{id}/evaluations on the job's eval split and on another dataset; polled, listed, in the metrics."""
    started = stack.client.post(f"/jobs/{job_id}/evaluations", json={"max_examples": 16})
    assert started.status_code == 202 and started.json()["status"] in ("queued", "running"), started.text
    done = _poll(stack, started.json()["poll_url"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["examples"] == 16 and result["label_examples"] == 16
    base, adapter = result["base"], result["adapter"]
    assert adapter["accuracy"] >= base["accuracy"] + 0.5, result
    assert adapter["eval_loss"] < base["eval_loss"] and adapter["perplexity"] < base["perplexity"], result

    other = stack.upload("more.jsonl", sentiment_jsonl(10))
    body = {"dataset": other["id"], "include_base": False, "max_new_tokens": 3}
    second = _poll(stack, stack.client.post(f"/jobs/{job_id}/evaluations", json=body).json()["poll_url"])
    assert second["status"] == "succeeded" and second["dataset"] == other["id"], second
    assert second["result"]["examples"] == 10 and second["result"]["base"] is None
    assert second["result"]["adapter"]["accuracy"] >= 0.5 and second["result"]["adapter"]["perplexity"] > 1

    listed = stack.client.get(f"/jobs/{job_id}/evaluations").json()["data"]
    assert [e["id"] for e in listed] == [done["id"], second["id"]]
    in_metrics = stack.client.get(f"/jobs/{job_id}/metrics").json()["evaluations"]
    assert [e["result"] for e in in_metrics] == [result, second["result"]]

    # Another tenant's dataset is not found; a dataset without the format's columns says which.
    foreign = stack.client_for(stack.make_key("eval-other", tenant="eval-other"))
    theirs = foreign.post("/datasets", files={"file": ("x.jsonl", sentiment_jsonl(4))}).json()
    missing = stack.client.post(f"/jobs/{job_id}/evaluations", json={"dataset": theirs["id"]})
    assert missing.status_code == 404 and "GET /datasets" in missing.json()["detail"], missing.text
    assert foreign.post(f"/jobs/{job_id}/evaluations", json={}).status_code == 404
    unfit = stack.upload("unfit.jsonl", b'{"text": "no review or label"}')
    refused = stack.client.post(f"/jobs/{job_id}/evaluations", json={"dataset": unfit["id"]})
    assert refused.status_code == 422 and "review" in refused.json()["detail"], refused.text
    assert stack.client.get(f"/jobs/{job_id}/evaluations/ev_{'0' * 24}").status_code == 404


def _assert_merged_matches(stack: Stack, job_id: str, tiny_model: Path, tmp_path: Path) -> None:
    for name in ("merged", "adapter"):
        archive = stack.client.get(f"/jobs/{job_id}/artifacts/{name}")
        with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
            tar.extractall(tmp_path / name, filter="data")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter")
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_generate_and_export_refuse_an_unfinished_job(stack: Stack) -> None:
    dataset = stack.upload("sentiment.jsonl", sentiment_jsonl(8))
    job = stack.client.post("/jobs", json=sentiment_spec(dataset["id"])).json()
    stack.client.post(f"/jobs/{job['id']}/cancel")
    assert stack.client.post(f"/jobs/{job['id']}/generate", json={"prompts": ["x"]}).status_code == 409
    assert stack.client.post(f"/jobs/{job['id']}/exports", json={"kind": "merged"}).status_code == 409
    assert stack.client.post(f"/jobs/{job['id']}/generate", json={"prompts": []}).status_code == 422
    assert stack.client.get(f"/jobs/{job['id']}/exports/exp_{'0' * 24}").status_code == 404
    assert stack.client.get(f"/jobs/{job['id']}/generations/gen_{'0' * 24}").status_code == 404
    refused = stack.client.post(f"/jobs/{job['id']}/evaluations", json={})
    assert refused.status_code == 409 and "succeeded" in refused.json()["detail"]


def test_merged_export_refuses_prompt_learning_adapters(stack: Stack) -> None:
    dataset = stack.upload("sentiment.jsonl", sentiment_jsonl(8))
    spec = {**sentiment_spec(dataset["id"]), "adapter": {"method": "prompt_tuning", "init": "sample_vocab"}}
    job = stack.client.post("/jobs", json=spec)
    assert job.status_code == 201, job.text
    stack.client.post(f"/jobs/{job.json()['id']}/cancel")  # refused before the job's state is even looked at
    refused = stack.client.post(f"/jobs/{job.json()['id']}/exports", json={"kind": "merged"})
    assert refused.status_code == 409 and "prompt-learning" in refused.json()["detail"], refused.text

"""Preference tuning on the real stack: an SFT job, then DPO and KTO jobs that continue from it (`init_from`), with
4-bit QLoRA on the CPU; their reward metrics, their lineage, and what init_from refuses."""

import json
import time

import pytest

from tests.integration.conftest import ONE_DATABASE, Stack

pytestmark = ONE_DATABASE

REVIEWS = [
    ("This movie was wonderful, great acting.", "positive", "negative"),
    ("The food was terrible and the service slow.", "negative", "positive"),
    ("A boring, awful story.", "negative", "positive"),
    ("An excellent, amazing book.", "positive", "negative"),
]
QLORA = {"bits": 4, "quant_type": "nf4", "double_quant": True}


def jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": f"Review: {text} Sentiment?"}]


def answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def spec(dataset: str, fmt: dict, **more: object) -> dict:
    training = {"max_steps": 2, "batch_size": 2, "learning_rate": 5e-3, **more.pop("training", {})}  # type: ignore[arg-type]
    return {
        "base_model": "tiny-llama",
        "dataset": dataset,
        "format": fmt,
        "quantization": QLORA,
        "training": training,
        **more,
    }


@pytest.fixture(scope="module")
def sft_job(stack: Stack) -> dict:
    rows = [{"messages": user(r) + answer(good)} for r, good, _ in REVIEWS * 2]
    dataset = stack.upload("sft.jsonl", jsonl(rows))
    created = stack.client.post("/jobs", json=spec(dataset["id"], {"type": "chat"}, training={"max_steps": 4}))
    assert created.status_code == 201, created.text
    done = stack.wait(created.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    return done


def test_dpo_continues_from_the_sft_job_and_reports_rewards(stack: Stack, sft_job: dict) -> None:
    # OpenAI's DPO lines and TRL's pairs in one file: each row is read in its own shape
    rows = [
        {"input": {"messages": user(r)}, "preferred_output": answer(good), "non_preferred_output": answer(bad)}
        for r, good, bad in REVIEWS
    ] + [{"prompt": user(r), "chosen": answer(good), "rejected": answer(bad)} for r, good, bad in REVIEWS]
    dataset = stack.upload("pairs.jsonl", jsonl(rows))
    body = spec(
        dataset["id"],
        {"type": "preference"},
        method={"type": "dpo", "beta": 0.1},
        init_from={"job": sft_job["id"]},
        training={"max_steps": 3, "eval_fraction": 0.25},
    )
    checked = stack.client.post("/jobs/validate", json=body).json()
    assert checked["ok"], checked["problems"]
    pair = checked["pairs"][0]
    assert "Review: This movie was wonderful" in pair["prompt"] and pair["prompt_tokens"] > 0
    assert pair["chosen"]["text"].startswith("positive") and pair["rejected"]["text"].startswith("negative")
    assert (checked["train_examples"], checked["eval_examples"], checked["total_steps"]) == (6, 2, 3)
    created = stack.client.post("/jobs", json=body)
    assert created.status_code == 201, created.text
    done = stack.wait(created.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["lineage"]["parent"]["job"] == sft_job["id"] and done["lineage"]["parent"]["artifact"] == "adapter"
    metrics = stack.client.get(f"/jobs/{done['id']}/metrics").json()
    train, evals = metrics["train"], metrics["eval"]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(train[-1])
    assert "rewards/accuracies" in evals[-1] and 0 <= evals[-1]["rewards/accuracies"] <= 1
    csv = stack.client.get(f"/jobs/{done['id']}/metrics", params={"format": "csv"})
    assert csv.status_code == 200 and "rewards/margins" in csv.text.splitlines()[0]


def test_kto_continues_from_the_sft_job(stack: Stack, sft_job: dict) -> None:
    rows = [{"prompt": user(r), "completion": answer(good), "label": True} for r, good, _ in REVIEWS]
    rows += [{"messages": user(r) + answer(bad), "label": False} for r, _, bad in REVIEWS]
    dataset = stack.upload("labelled.jsonl", jsonl(rows))
    body = spec(
        dataset["id"],
        {"type": "unpaired_preference"},
        method={"type": "kto"},
        init_from={"job": sft_job["id"]},
    )
    checked = stack.client.post("/jobs/validate", json=body).json()
    assert checked["ok"], checked["problems"]
    assert checked["pairs"][0]["label"] is True and checked["pairs"][0]["completion"]["tokens"] > 0
    created = stack.client.post("/jobs", json=body)
    assert created.status_code == 201, created.text
    done = stack.wait(created.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["lineage"]["parent"]["job"] == sft_job["id"]
    assert "kl" in stack.client.get(f"/jobs/{done['id']}/metrics").json()["train"][-1]


def test_init_from_refuses_another_base_another_tenant_and_a_missing_checkpoint(stack: Stack, sft_job: dict) -> None:
    rows = [{"prompt": "Say yes.", "chosen": "yes", "rejected": "no"}] * 4
    dataset = stack.upload("tiny-pairs.jsonl", jsonl(rows))
    body = spec(dataset["id"], {"type": "preference"}, method={"type": "dpo"}, init_from={"job": sft_job["id"]})
    other_base = stack.client.post("/jobs", json={**body, "base_model": "tiny-qwen"})
    assert other_base.status_code == 422 and "an adapter continues only on the base" in other_base.json()["detail"]
    no_step = stack.client.post("/jobs", json={**body, "init_from": {"job": sft_job["id"], "checkpoint_step": 99}})
    assert no_step.status_code == 422 and "has no checkpoint at step 99" in no_step.json()["detail"]
    stranger = stack.client_for(stack.make_key("stranger", tenant="elsewhere"))
    refused = stranger.post("/jobs/validate", json=body).json()  # not theirs: as if it did not exist
    assert any(p.get("field") == "init_from.job" and "no job" in p["message"] for p in refused["problems"])
    training = stack.client.post(
        "/jobs", json=spec(dataset["id"], {"type": "text", "field": "prompt"}, training={"max_steps": 500})
    )
    assert training.status_code == 201, training.text
    early = stack.client.post("/jobs", json={**body, "init_from": {"job": training.json()["id"]}})
    assert early.status_code == 409 and "its adapter exists once it has succeeded" in early.json()["detail"]
    stack.client.post(f"/jobs/{training.json()['id']}/cancel")
    assert stack.wait(training.json()["id"])["status"] == "cancelled"


def test_the_openai_sdk_runs_a_dpo_job_from_its_fine_tuned_model(stack: Stack, sft_job: dict) -> None:
    import openai

    sdk = openai.OpenAI(base_url=stack.local.base_url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    rows = [
        {"input": {"messages": user(r)}, "preferred_output": answer(good), "non_preferred_output": answer(bad)}
        for r, good, bad in REVIEWS
    ]
    train = sdk.files.create(file=("dpo.jsonl", jsonl(rows)), purpose="fine-tune")
    parent = sdk.fine_tuning.jobs.retrieve(sft_job["id"]).fine_tuned_model
    assert parent and parent.endswith(sft_job["id"])
    job = sdk.fine_tuning.jobs.create(
        model=parent,  # a fine-tuned model: the DPO job continues from its adapter
        training_file=train.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 2}}},
        extra_body={"spec_overrides": {"training": {"max_steps": 2}}},
    )
    assert job.model == "tiny-llama" and job.method.type == "dpo"
    while (done := sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.3)
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.beta == 0.2
    ours = stack.client.get(f"/jobs/{job.id}").json()
    assert ours["spec"]["init_from"]["job"] == sft_job["id"] and ours["spec"]["method"]["type"] == "dpo"

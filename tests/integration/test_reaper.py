"""An export or evaluation whose worker dies ends `failed` (app/inference/reaper.py): SIGKILL a real worker mid-task."""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR
from tests.integration.conftest import Stack, private_stack
from tests.integration.test_try_it import sentiment_jsonl, sentiment_spec

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

STALE_AFTER_S = 2.0
REAPER_ENV = {
    "FT_INFERENCE_STALE_AFTER_S": str(STALE_AFTER_S),
    "FT_HEARTBEAT_SECONDS": "0.3",
    "FT_RECONCILE_EVERY_SECONDS": "0.5",
    "FT_INFERENCE_QUEUE": "inference",
}
# Big enough (about 50M parameters, 200 MB in fp32) that merging and packing it takes seconds, not milliseconds:
# time to kill the worker while the export is running.
MID_MODEL = "mid-llama"
MID_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
}


@pytest.fixture(scope="module")
def reaper_stack(tiny_model: Path, session_dir: Path) -> Iterator[Stack]:
    """A private stack (own Redis, SQLite) with a training worker and an inference worker the test kills."""
    from worker.training.tiny import make_tiny_model

    if not (MODELS_DIR / MID_MODEL / "config.json").exists():
        make_tiny_model(MODELS_DIR / MID_MODEL, config=MID_CONFIG)
    root = session_dir / "reaper"
    env = {**os.environ, **REAPER_ENV, "FT_DATA_DIR": str(root / "data"), "FT_MODELS_DIR": str(MODELS_DIR)}
    env.pop("FT_DATABASE_URL", None)
    with private_stack("reaper", root, env, worker=True, inference=True) as stack:
        yield stack


def _wait_status(stack: Stack, url: str, wanted: set[str], timeout: float, every: float = 0.05) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = stack.client.get(url).json()
        if body["status"] in wanted:
            return body
        time.sleep(every)
    raise AssertionError(f"{url} still {body['status']} after {timeout}s, not {wanted}")


def _kill_while_running(stack: Stack, url: str) -> dict:
    """SIGKILL the inference worker once the task at `url` runs; returns it once the API has failed it."""
    _wait_status(stack, url, {"running"}, timeout=120)
    stack.local.kill("inference")  # parent and child: nothing left to record the end
    stack.local.stop_process("inference")
    killed = time.monotonic()
    assert stack.client.get(url).json()["status"] == "running"  # no one else knows yet
    failed = _wait_status(stack, url, {"failed", "succeeded"}, timeout=STALE_AFTER_S + 30, every=0.2)
    assert failed["status"] == "failed" and "stopped responding" in failed["error"], failed
    assert time.monotonic() - killed < STALE_AFTER_S + 10  # the stale timeout plus a sweep or two
    stack.local.start_inference_worker()
    return failed


def test_dead_workers_exports_and_evaluations_are_failed(reaper_stack: Stack) -> None:
    stack = reaper_stack
    dataset = stack.upload("sentiment.jsonl", sentiment_jsonl(20))
    spec = sentiment_spec(dataset["id"])
    spec["base_model"] = MID_MODEL
    spec["training"].update(max_steps=2, batch_size=4, evaluate_base=False)
    job = stack.client.post("/jobs", json=spec).json()
    assert stack.wait(job["id"], timeout=300)["status"] == "succeeded"

    export = stack.client.post(f"/jobs/{job['id']}/exports", json={"kind": "merged"}).json()
    failed = _kill_while_running(stack, f"/jobs/{job['id']}/exports/{export['id']}")
    assert f"POST /jobs/{job['id']}/exports" in failed["error"] and failed["started_at"]

    evaluation = stack.client.post(f"/jobs/{job['id']}/evaluations", json={"max_examples": 4}).json()
    _kill_while_running(stack, evaluation["poll_url"])

    # A live worker heartbeats: asked again, both finish, however long they take beyond the stale timeout.
    again = stack.client.post(f"/jobs/{job['id']}/exports", json={"kind": "merged"}).json()
    done = _wait_status(stack, f"/jobs/{job['id']}/exports/{again['id']}", {"failed", "succeeded"}, 300, 0.3)
    assert done["status"] == "succeeded", done
    url = stack.client.post(f"/jobs/{job['id']}/evaluations", json={"max_examples": 4}).json()["poll_url"]
    done = _wait_status(stack, url, {"failed", "succeeded"}, 300, 0.3)
    assert done["status"] == "succeeded" and done["result"]["base"]["eval_loss"] is not None, done

"""Hub publishing end to end, against a real local stand-in of the Hub's API (tests/hub_server.py): the Hub cannot
be reached from here. A private stack (its own Redis and SQLite, the API, a training and an inference worker) runs
with HF_ENDPOINT at the stand-in, online and without Xet; the shared `stack` stays offline, as the tests that
expect an unreachable Hub need it. A job trains on a base read from the stand-in; its adapter and its merged model
are published with the tenant's Hub token (and refused with a wrong one); a second job names the published adapter
as its base_model and trains on from it, loaded back by name."""

import io
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR
from tests.hub_server import HubStandIn, HubUser, hub_env, hub_stand_in
from tests.integration.conftest import Stack, private_stack
from tests.integration.test_end_to_end import quotes_jsonl

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

ALICE = HubUser("alice", "hf_alice_" + secrets.token_hex(8), orgs=("acme",))
BOB = HubUser("bob", "hf_bob_" + secrets.token_hex(8))
BASE = "tiny-org/tiny-llama"  # the tiny model, as a public Hub repo of the stand-in


@pytest.fixture(scope="module")
def hub(tiny_model: Path, session_dir: Path) -> Iterator[HubStandIn]:
    with hub_stand_in(session_dir / "hub-stand-in", [ALICE, BOB]) as server:
        server.seed(BASE, {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()})
        yield server


@pytest.fixture(scope="module")
def hub_stack(hub: HubStandIn, session_dir: Path) -> Iterator[Stack]:
    root = session_dir / "hub-stack"
    env = {
        **os.environ,
        **hub_env(hub, root / "hf-home"),
        "FT_DATA_DIR": str(root / "data"),
        "FT_MODELS_DIR": str(MODELS_DIR),
        "FT_INFERENCE_QUEUE": "inference",
    }
    env.pop("FT_DATABASE_URL", None)
    env.pop("HF_TOKEN", None)  # a tenant never reads or writes with the service's token anyway
    with private_stack("hub", root, env, worker=True, inference=True) as stack:
        set_hub_token(stack, ALICE.token)
        yield stack


def set_hub_token(stack: Stack, token: str) -> None:
    argv = [sys.executable, "-m", "ftctl.main", "keys", "create", "hub-admin", "--admin"]
    out = subprocess.run(argv, env=stack.local.env, check=True, capture_output=True, text=True)
    with stack.client_for(out.stdout.strip().splitlines()[-1]) as admin:
        answer = admin.put("/admin/tenants/hub/hub-token", json={"token": token})
        assert answer.status_code == 200, answer.text


def export(stack: Stack, job_id: str, body: dict, timeout: float = 240) -> dict:
    started = stack.client.post(f"/jobs/{job_id}/exports", json=body)
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + timeout
    while (record := stack.client.get(started.headers["location"]).json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, f"export still {record['status']} after {timeout}s"
        time.sleep(0.3)
    return record


def train(stack: Stack, base_model: str) -> dict:
    dataset = stack.upload("quotes.jsonl", quotes_jsonl(2))
    spec = {
        "base_model": base_model,
        "dataset": dataset["id"],
        "format": {"type": "template", "template": "{quote} ->: {tags}"},
        "quantization": None,
        "training": {"max_steps": 2, "batch_size": 2, "checkpoint_every_steps": None},
    }
    created = stack.client.post("/jobs", json=spec)
    assert created.status_code == 201, created.text
    job = stack.wait(created.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    return job


def adapter_files(stack: Stack, job_id: str) -> dict[str, bytes]:
    archive = stack.client.get(f"/jobs/{job_id}/artifacts/adapter")
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_a_trained_adapter_is_published_and_trained_on_again_by_name(hub_stack: Stack, hub: HubStandIn) -> None:
    job = train(hub_stack, BASE)

    # The adapter, private, in one commit, with the tenant's token.
    published = export(hub_stack, job["id"], {"kind": "hub", "repo_id": "acme/quotes-tagger", "private": True})
    assert published["status"] == "succeeded", published["error"]
    repo = hub.repos["acme/quotes-tagger"]
    assert repo.private and published["hub"]["url"] == f"{hub.url}/acme/quotes-tagger"
    assert published["hub"]["commit"] == repo.branches["main"] and len(repo.trees) == 2
    files = hub.files("acme/quotes-tagger")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    trained = adapter_files(hub_stack, job["id"])
    assert hub.content("acme/quotes-tagger", "adapter_model.safetensors") == trained["adapter_model.safetensors"]
    assert f'"base_model_name_or_path": "{BASE}"' in hub.content("acme/quotes-tagger", "adapter_config.json").decode()
    card = hub.content("acme/quotes-tagger", "README.md").decode()
    assert card.startswith(f"---\nbase_model: {BASE}\n") and job["id"] in card
    assert {user for _, path, user in hub.requests if "acme/" in path} == {"alice"}

    # The merged model: weights, no adapter.
    merged = export(hub_stack, job["id"], {"kind": "hub", "repo_id": "acme/quotes-tagger-merged", "merged": True})
    assert merged["status"] == "succeeded", merged["error"]
    merged_files = set(hub.files("acme/quotes-tagger-merged"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= merged_files
    assert "adapter_config.json" not in merged_files

    # A wrong token: failed, in words, and the token is nowhere.
    wrong = "hf_wrong_" + secrets.token_hex(8)
    set_hub_token(hub_stack, wrong)
    try:
        refused = export(hub_stack, job["id"], {"kind": "hub", "repo_id": "acme/never"})
    finally:
        set_hub_token(hub_stack, ALICE.token)
    assert refused["status"] == "failed" and "401" in refused["error"] and "hub-token" in refused["error"]
    assert wrong not in refused["error"] and "acme/never" not in hub.repos

    # Loaded back by name: base_model names the adapter repo, so the job is its base with that adapter continued.
    again = train(hub_stack, "acme/quotes-tagger")
    assert again["spec"]["base_model"] == BASE and again["spec"]["init_from"]["hub"] == "acme/quotes-tagger"
    assert again["lineage"]["parent"] == {"hub": "acme/quotes-tagger", "revision": None}
    assert again["trainable_parameters"] == job["trainable_parameters"]  # the published adapter's own LoRA
    weights = f"/acme/quotes-tagger/resolve/{repo.branches['main']}/adapter_model.safetensors"
    assert ("GET", weights, "alice") in hub.requests  # the worker downloaded it with the tenant's token
    assert adapter_files(hub_stack, again["id"])["adapter_model.safetensors"] != trained["adapter_model.safetensors"]

    logs = "".join(p.read_text(errors="replace") for p in hub_stack.local.log_dir.glob("*.log"))
    assert ALICE.token not in logs and wrong not in logs

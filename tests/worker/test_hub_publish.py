"""Hub publishing and Hub adapters loaded back by name, in process, against a real local stand-in of the Hub's API
(tests/hub_server.py: the Hub itself cannot be reached from here). No training: the adapter is a tiny model's
LoRA with non-zero weights, saved with its tokenizer and model card as a job's is."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from peft import LoraConfig, PeftConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.datasets import access
from app.spec.job import JobSpec
from ftctl.localstack import free_port
from tests.conftest import TINY_MODEL
from tests.hub_server import HubStandIn, HubUser, hub_stand_in, use_in_process
from worker import hub_publish
from worker.hub_publish import HubTarget, PublishError
from worker.model_card import write_model_card
from worker.training import adapters
from worker.training.errors import TrainingError

ALICE = HubUser("alice", "hf_alice_writes", orgs=("acme",))
BOB = HubUser("bob", "hf_bob_writes")
HUB_BASE = "tiny-org/tiny-llama"  # the base as a Hub id: what the published card and config must name


def spec(base_model: str = HUB_BASE, **overrides: object) -> JobSpec:
    fields = {"base_model": base_model, "dataset": "ds_" + "0" * 24, "quantization": None, **overrides}
    return JobSpec.model_validate(fields)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStandIn]:
    with hub_stand_in(tmp_path_factory.mktemp("hub"), [ALICE, BOB]) as server:
        yield server


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch, hub: HubStandIn, tmp_path: Path) -> None:
    use_in_process(monkeypatch, hub, tmp_path / "hf-cache")


@pytest.fixture(scope="module")
def adapter_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A job's adapter directory: LoRA weights (non-zero, as if trained), tokenizer, model card, training_spec.json."""
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    out = tmp_path_factory.mktemp("job") / "adapter"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    (out / "training_spec.json").write_text(json.dumps({"webhook_url": "https://example.com/hook?token=secret"}))
    write_model_card(out, spec(), {"seed": 42}, {"steps": 2}, [(1, 2.5), (2, 2.0)], "job_" + "a" * 24)
    return out


def _publish(adapter_dir: Path, tmp_path: Path, target: HubTarget, token: str, job_spec: JobSpec | None = None):  # noqa: ANN202
    folder = hub_publish.stage(job_spec or spec(), adapter_dir, target, tmp_path / "staged")
    return hub_publish.publish(folder, target, token, "lora adapter from a test")


def test_an_adapter_lands_in_one_commit_with_its_card_and_loads_back_by_name(
    hub: HubStandIn, adapter_dir: Path, tmp_path: Path
) -> None:
    published = _publish(adapter_dir, tmp_path, HubTarget("acme/tagger", private=True, tenant="t1"), ALICE.token)

    repo = hub.repos["acme/tagger"]
    assert repo.private and published.url == f"{hub.url}/acme/tagger"
    assert published.commit == repo.branches["main"] and len(repo.trees) == 2  # the repo's first commit, then ours
    files = hub.files("acme/tagger")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= set(files)
    assert "training_spec.json" not in files  # the card shows the spec, its webhook URL redacted
    assert files["adapter_model.safetensors"].lfs  # by the LFS batch API, as the Hub takes weights
    weights = hub.content("acme/tagger", "adapter_model.safetensors")
    assert weights == (adapter_dir / "adapter_model.safetensors").read_bytes()
    card = hub.content("acme/tagger", "README.md").decode()
    assert card.startswith(f"---\nbase_model: {HUB_BASE}\n") and "library_name: peft" in card.split("---")[1]
    assert 'PeftModel.from_pretrained(base, "acme/tagger")' in card
    assert {user for _, path, user in hub.requests if "acme/tagger" in path} == {"alice"}

    # As the seed notes load it: the config names the base by its Hub id, not the worker's local folder.
    config = PeftConfig.from_pretrained("acme/tagger", token=ALICE.token)
    assert config.base_model_name_or_path == HUB_BASE and config.r == 8
    with pytest.raises(RepositoryNotFoundError):  # private: the Hub hides it from anyone else
        HfApi().model_info("acme/tagger", token=BOB.token)


def test_a_wrong_token_fails_in_words_without_the_token(hub: HubStandIn, adapter_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PublishError) as failed:
        _publish(adapter_dir, tmp_path, HubTarget("acme/wrong-token", tenant="t1"), "hf_not_a_real_token")
    assert "401" in failed.value.message and "PUT /admin/tenants/t1/hub-token" in failed.value.message
    assert "hf_not_a_real_token" not in failed.value.message
    assert "acme/wrong-token" not in hub.repos


def test_a_name_taken_by_someone_else_is_refused(hub: HubStandIn, adapter_dir: Path, tmp_path: Path) -> None:
    hub.seed("bob/tagger", {"README.md": b"bob's"}, private=False)
    with pytest.raises(PublishError, match="already exists and is public"):
        _publish(adapter_dir, tmp_path, HubTarget("bob/tagger", private=True), ALICE.token)
    with pytest.raises(PublishError, match=r"may not write to 'bob/tagger' \(403\)"):
        _publish(adapter_dir, tmp_path, HubTarget("bob/tagger", private=False), ALICE.token)
    with pytest.raises(PublishError, match=r"may not write to 'bob/new' \(403\).*namespace 'bob'"):
        _publish(adapter_dir, tmp_path, HubTarget("bob/new"), ALICE.token)
    assert set(hub.files("bob/tagger")) == {"README.md"} and "bob/new" not in hub.repos


def test_an_unreachable_hub_fails_in_words(monkeypatch: pytest.MonkeyPatch, adapter_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(PublishError, match="could not be reached"):
        _publish(adapter_dir, tmp_path, HubTarget("acme/offline"), ALICE.token)


def test_a_branch_is_created_and_committed_to(hub: HubStandIn, adapter_dir: Path, tmp_path: Path) -> None:
    published = _publish(adapter_dir, tmp_path, HubTarget("acme/branched", revision="v2"), ALICE.token)
    repo = hub.repos["acme/branched"]
    assert repo.branches["v2"] == published.commit != repo.branches["main"]
    assert "adapter_config.json" in hub.files("acme/branched", "v2")
    assert "adapter_config.json" not in hub.files("acme/branched", "main")


def test_a_merged_model_lands_as_weights_and_the_card_of_a_local_base_names_none(
    hub: HubStandIn, adapter_dir: Path, tmp_path: Path
) -> None:
    local = spec(TINY_MODEL)  # a directory of FT_MODELS_DIR: not on the Hub, so not in the card's YAML
    _publish(adapter_dir, tmp_path, HubTarget("acme/tagger-merged", merged=True), ALICE.token, local)
    files = hub.files("acme/tagger-merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert "adapter_config.json" not in files
    merged = load_file(str(hub.blobs / files["model.safetensors"].sha256))
    assert not any("lora" in name for name in merged)
    card = hub.content("acme/tagger-merged", "README.md").decode()
    yaml = card.split("---")[1]
    assert "base_model" not in yaml and "library_name: transformers" in yaml and "merged" in yaml
    assert 'AutoModelForCausalLM.from_pretrained("acme/tagger-merged")' in card and "local model" in card


def test_a_hub_adapter_is_loaded_by_name_as_the_tenant_and_checked(
    hub: HubStandIn, adapter_dir: Path, tmp_path: Path, tiny_model: Path
) -> None:
    _publish(adapter_dir, tmp_path, HubTarget("acme/start-here"), ALICE.token)
    continuing = spec(init_from={"hub": "acme/start-here"})
    with access.acting_for(access.HubAccess("t1", ALICE.token)):
        model = adapters.add_adapter(AutoModelForCausalLM.from_pretrained(tiny_model), continuing)
        with pytest.raises(TrainingError, match="is a lora adapter and this spec trains dora") as wrong:
            adapters.hub_adapter(spec(init_from={"hub": "acme/start-here"}, adapter={"method": "dora"}))
        assert wrong.value.type == "invalid_spec"
        with pytest.raises(TrainingError, match="not for base_model 'other/base'"):
            adapters.hub_adapter(spec("other/base", init_from={"hub": "acme/start-here"}))
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    published = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert trained and len(trained) == len(published)  # trainable again, every LoRA matrix of the Hub's adapter
    some = next(n for n in published if "lora_A" in n)
    loaded = next(p for n, p in trained.items() if n.replace(".default", "") == some)
    torch.testing.assert_close(loaded.detach(), published[some])
    with pytest.raises(TrainingError, match="private or gated") as anonymous:  # no token: the private repo is hidden
        adapters.hub_adapter(continuing)
    assert anonymous.value.type == "model_not_found"

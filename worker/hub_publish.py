"""Publishing a job's adapter, or its merged model, to a Hugging Face Hub repo: one commit, as the job's tenant.

The folder published is staged from the job's adapter: its files less training_spec.json (the model card shows the
spec, its webhook URL redacted), with adapter_config.json naming the base by the job's `base_model`, so
`PeftConfig.from_pretrained(repo).base_model_name_or_path` finds it again (PEFT records the local folder the worker
loaded). The model card (README.md) keeps `base_model` in its YAML so the Hub links the base; a base that is a
directory of FT_MODELS_DIR is not on the Hub, so its name is left out of the YAML there. A merged model is staged
by worker/training/merge.py, with a card of its own.

The Hub is huggingface_hub's endpoint (HF_ENDPOINT, as operators set it); the token is the tenant's, passed to
every call, never the service's HF_TOKEN, and never in a message or log line. No SQL here: worker/export.py
records the outcome.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from app.datasets.access import local_model_dir
from app.spec.job import JobSpec
from worker.training.merge import merge_adapter

LEFT_OUT = ("training_spec.json",)


@dataclass(frozen=True)
class HubTarget:
    """Where to publish: an export's options (app/inference/export_schemas.py `hub_options`)."""

    repo_id: str
    private: bool = True
    merged: bool = False
    revision: str | None = None
    tenant: str | None = None  # named in messages about its token


@dataclass(frozen=True)
class Published:
    url: str
    commit: str
    commit_url: str


class PublishError(Exception):
    """The Hub refused or could not be reached: `message` says which and what to do, without the token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _load_lines(spec: JobSpec, repo_id: str, merged: bool) -> str:
    if merged:
        return f'```python\nmodel = AutoModelForCausalLM.from_pretrained("{repo_id}")\n```\n'
    return (
        "```python\nfrom peft import PeftConfig, PeftModel\n"
        f'config = PeftConfig.from_pretrained("{repo_id}")\n'
        "base = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path)\n"
        f'model = PeftModel.from_pretrained(base, "{repo_id}")\n```\n\n'
        f'To train it further with finetune-service: `"base_model": "{repo_id}"` in a job spec (its base, with this '
        f'adapter continued), or `"init_from": {{"hub": "{repo_id}"}}` with `"base_model": "{spec.base_model}"`.\n'
    )


def hub_card(card: str, spec: JobSpec, target: HubTarget) -> str:
    """The job's model card as published: its YAML set for the Hub (huggingface_hub's ModelCard: `base_model` when
    the base is on the Hub, `library_name`, tags), the card itself, then how to load it from this repo."""
    from huggingface_hub import ModelCard

    published = ModelCard(card, ignore_metadata_errors=True)
    data, on_hub = published.data, local_model_dir(spec.base_model) is None
    data.base_model = spec.base_model if on_hub else None
    data.library_name = "transformers" if target.merged else "peft"
    # PEFT's own card tags `base_model:adapter:<the worker's local folder>`: not for the Hub to read.
    tags = [str(t) for t in data.tags or [] if not str(t).startswith("base_model:")]
    data.tags = list(dict.fromkeys([*tags, "lora", "finetune-service", *(["merged"] if target.merged else [])]))
    body = published.text.lstrip("\n")
    if target.merged:
        data.base_model_relation = "merge" if on_hub else None
        body = f"The adapter described below, merged into the weights of `{spec.base_model}`.\n\n{body}"
    if not on_hub:
        body += f"\nIts base, `{spec.base_model}`, is a local model of the service that trained it, not on the Hub.\n"
    loading = _load_lines(spec, target.repo_id, target.merged)
    published.text = f"{body.rstrip()}\n\n## Loading it from the Hub\n{loading}"
    return str(published)


def stage(spec: JobSpec, adapter_dir: Path, target: HubTarget, out: Path) -> Path:
    """The folder to publish under `out`: the adapter's files, or the merged model (merged with the job's tokenizer),
    with the Hub's model card."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise PublishError("the job's adapter files are gone (deleted or expired): there is nothing to publish")
    shutil.rmtree(out, ignore_errors=True)
    card = (adapter_dir / "README.md").read_text(encoding="utf-8") if (adapter_dir / "README.md").is_file() else ""
    if target.merged:
        merge_adapter(spec, adapter_dir, out)
        if (adapter_dir / "loss_curve.png").is_file():
            shutil.copy2(adapter_dir / "loss_curve.png", out / "loss_curve.png")
    else:
        shutil.copytree(adapter_dir, out, ignore=shutil.ignore_patterns(*LEFT_OUT))
        config_path = out / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = spec.base_model  # not the worker's local folder of it
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "README.md").write_text(hub_card(card, spec, target), encoding="utf-8")
    return out


def publish(folder: Path, target: HubTarget, token: str, message: str) -> Published:
    """Create the repo if missing (private as asked), then commit every file of `folder` to it in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    try:
        url = str(api.create_repo(target.repo_id, private=target.private, exist_ok=True, repo_type="model"))
        if target.private and not api.model_info(target.repo_id).private:
            raise PublishError(
                f"the Hub repo {target.repo_id!r} already exists and is public (yours or someone else's), and this "
                "export asked for a private one: choose another repo_id, make the repo private on the Hub if it is "
                'yours, or export with "private": false'
            )
        if target.revision not in (None, "main"):
            api.create_branch(target.repo_id, branch=target.revision, exist_ok=True)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        operations = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in files]
        commit = api.create_commit(target.repo_id, operations, commit_message=message, revision=target.revision)
    except PublishError:
        raise
    except Exception as exc:
        raise PublishError(_scrubbed(explain(exc, target, api.endpoint), token)) from None
    return Published(url=url, commit=commit.oid, commit_url=commit.commit_url)


def explain(exc: Exception, target: HubTarget, endpoint: str) -> str:
    """What went wrong with the Hub, in words a user can act on."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    repo = target.repo_id
    set_token = f"PUT /admin/tenants/{target.tenant or '{tenant}'}/hub-token"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status, said = exc.response.status_code, (exc.server_message or "").strip().splitlines()
        said_text = f" (the Hub said: {said[0][:300]})" if said else ""
        if status == 401 and "Invalid credentials" in (exc.server_message or ""):
            return (
                f"the Hub refused the tenant's Hub token (401 Unauthorized): it is wrong, expired or revoked; an admin "
                f"sets a new one with {set_token}"
            )
        if status in (401, 403, 404):
            return (
                f"the tenant's Hub token may not write to {repo!r} ({status}){said_text}: its namespace "
                f"{repo.split('/')[0]!r} must be the token's user or one of its organisations, with a token that can "
                "write, and the name must not be taken by someone else; choose another repo_id, or have an admin "
                f"set a token that can write there ({set_token})"
            )
        return f"the Hub answered {status} while publishing to {repo!r}{said_text}; the export can be tried again"
    if isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError | OSError):
        return (
            f"the Hugging Face Hub at {endpoint} could not be reached ({type(exc).__name__}); the export can be tried "
            "again once it answers"
        )
    if isinstance(exc, ValueError) and "metadata" in str(exc):
        return f"the Hub refused the model card's metadata for {repo!r}: {str(exc)[:300]}"
    return f"publishing to {repo!r} failed ({type(exc).__name__}: {str(exc)[:300]}); see the worker log"


def _scrubbed(message: str, token: str) -> str:
    """The message without the token, should any library have put it there."""
    return message.replace(token, "[token]") if token else message

"""`init_from` in the job spec: the trained adapter a job starts from, another job's or a Hub adapter repo's."""

import re

from pydantic import Field, field_validator, model_validator

from app.spec.formats import HUB_ID, StrictModel

JOB_ID = r"^job_[0-9a-f]{24}$"
# A branch, a tag or a commit id, as the Hub's /revision/ paths take them.
REVISION = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}$")


class InitFrom(StrictModel):
    """Start from a trained adapter instead of a fresh one: another job's (SFT then DPO, or more training on new data),
    or a PEFT adapter repo on the Hugging Face Hub. Its own PEFT settings (rank, alpha, target modules) apply."""

    job: str | None = Field(
        None, pattern=JOB_ID, description="A finished job of the same tenant, base model and adapter method."
    )
    checkpoint_step: int | None = Field(
        None, ge=1, description="One of its checkpoints (GET /jobs/{id}/artifacts); null: its final adapter."
    )
    hub: str | None = Field(
        None,
        max_length=200,
        description="Instead of `job`: a PEFT adapter repo on the Hub (`owner/name`), read with the tenant's Hub "
        "token; its base (adapter_config.json `base_model_name_or_path`) must be this spec's base_model and its "
        "method this spec's adapter.method.",
    )
    revision: str | None = Field(
        None, max_length=200, description="With `hub`: a branch, tag or commit of the repo; null: main."
    )

    @field_validator("hub")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        if value is not None and not HUB_ID.fullmatch(value):
            raise ValueError(f"init_from.hub must be a Hub repo id like `owner/name` (no URLs), got {value!r}")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and not REVISION.fullmatch(value):
            raise ValueError(
                f"init_from.revision must be a branch, tag or commit id (letters, digits, ._/-), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "InitFrom":
        if (self.job is None) == (self.hub is None):
            raise ValueError("init_from names one adapter: `job` (one of your jobs) or `hub` (a Hub adapter repo)")
        if self.hub is not None and self.checkpoint_step is not None:
            raise ValueError("init_from.checkpoint_step goes with `job`; for `hub`, pin a version with `revision`")
        if self.job is not None and self.revision is not None:
            raise ValueError("init_from.revision goes with `hub`; for `job`, name a checkpoint with `checkpoint_step`")
        return self


PEFT_TYPES = {"IA3": "ia3", "PREFIX_TUNING": "prefix_tuning", "PROMPT_TUNING": "prompt_tuning", "P_TUNING": "p_tuning"}


def peft_method(config: dict) -> str | None:
    """The spec's adapter.method for a PEFT adapter_config.json (LoRA's variants read from its flags)."""
    peft_type = str(config.get("peft_type") or "").upper()
    if peft_type == "LORA":
        return "dora" if config.get("use_dora") else "rslora" if config.get("use_rslora") else "lora"
    return PEFT_TYPES.get(peft_type)


def hub_adapter_mismatch(repo: str, config: dict, base_model: str, method: str) -> str | None:
    """Why a Hub adapter (its adapter_config.json) cannot continue on this base with this method, or None.

    Checked by the API when the job is submitted and again by the worker, which reads the repo as it is then.
    """
    base = str(config.get("base_model_name_or_path") or "")
    if base.lower() != base_model.lower():
        return (
            f"{repo!r} is an adapter for {base or 'an unnamed base'!r}, not for base_model {base_model!r}: an adapter "
            "continues only on the base it was trained on"
        )
    found = peft_method(config)
    if found is None:
        return f"{repo!r} holds a {config.get('peft_type')!r} adapter, a PEFT method this service does not train"
    if found != method:
        return f"{repo!r} is a {found} adapter and this spec trains {method}: set adapter.method to {found!r}"
    if str(config.get("task_type") or "CAUSAL_LM").upper() != "CAUSAL_LM":
        return f"{repo!r} is a {config.get('task_type')} adapter; init_from.hub continues causal-LM adapters"
    return None

"""The bodies of POST /jobs/{id}/exports and the export record: kind `merged` (a download) or `hub` (a Hub repo)."""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.schemas import UtcDatetime
from app.models import Export
from app.spec.formats import StrictModel

# A branch name as git allows it, kept simple: no `..`, no leading `-` or `/`, no spaces or control characters.
REVISION = re.compile(r"^(?!-)(?!/)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}(?<!/)$")
HUB_FIELDS = ("repo_id", "private", "merged", "revision")


def _repo_id_problem(value: str) -> str | None:
    """Why huggingface_hub (and so the Hub) would refuse this repo id, or None; the namespace is required here."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if value.count("/") != 1:
        return f"repo_id must be `namespace/name` (your user or organisation, then the repo), got {value!r}"
    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        return f"repo_id {value!r} is not a valid Hub repo id: {exc}"
    return None


class ExportCreate(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "merged"},
                {"kind": "hub", "repo_id": "my-org/support-bot-lora", "private": True, "merged": False},
            ]
        }
    )

    kind: Literal["merged", "hub"] = Field(
        "merged",
        description="`merged`: the adapter merged into the (dequantized) base, downloaded from GET "
        "/jobs/{id}/artifacts/merged. `hub`: published to a Hugging Face Hub repo with the tenant's Hub token.",
    )
    repo_id: str | None = Field(
        None,
        max_length=200,
        description="`hub` only: the repo to publish to, `namespace/name`; created if missing.",
    )
    private: bool = Field(True, description="`hub` only: create the repo private (an existing repo keeps its own).")
    merged: bool = Field(
        False, description="`hub` only: publish the merged model instead of the adapter (lora-like methods)."
    )
    revision: str | None = Field(
        None, max_length=200, description="`hub` only: the branch to commit to (created from main); null: main."
    )

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and (problem := _repo_id_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and not REVISION.fullmatch(value):
            raise ValueError(
                f"revision must be a branch name like `main` or `v2` (letters, digits, ._/-); got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> "ExportCreate":
        if self.kind == "hub" and self.repo_id is None:
            raise ValueError('kind "hub" needs repo_id, the Hub repo to publish to (`namespace/name`)')
        if self.kind == "merged":
            given = [name for name in HUB_FIELDS if name in self.model_fields_set]
            if given:
                raise ValueError(f'{", ".join(given)} apply to kind "hub" only; kind "merged" is a download')
        return self

    def hub_options(self) -> dict | None:
        """What the worker publishes with (stored on the export), or None for a merged download."""
        if self.kind != "hub":
            return None
        return {"repo_id": self.repo_id, "private": self.private, "merged": self.merged, "revision": self.revision}


class HubPublished(BaseModel):
    """Where a `hub` export goes and, once it has succeeded, the commit that put it there."""

    repo_id: str
    private: bool
    merged: bool
    revision: str | None = Field(None, description="The branch committed to; null: main.")
    url: str | None = Field(None, description="The repo's page on the Hub, once published.")
    commit: str | None = Field(None, description="The commit's id (40 hex digits), once published.")
    commit_url: str | None = None


class ExportPublic(BaseModel):
    id: str
    job_id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    error: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None = Field(None, description="When a worker began it (its heartbeat keeps it alive).")
    finished_at: UtcDatetime | None
    artifact_url: str | None = Field(None, description="Where a `merged` export downloads, once succeeded.")
    hub: HubPublished | None = Field(None, description="A `hub` export's target and, once succeeded, its commit.")

    @classmethod
    def of(cls, export: Export) -> "ExportPublic":
        done = export.status == "succeeded"
        url = f"/jobs/{export.job_id}/artifacts/{export.kind}" if done and export.kind == "merged" else None
        hub = None
        if export.kind == "hub" and export.options:
            hub = HubPublished(**export.options, **((export.result or {}) if done else {}))
        return cls(
            id=export.id,
            job_id=export.job_id,
            kind=export.kind,
            status=export.status,
            error=export.error_message,
            created_at=export.created_at,
            started_at=export.started_at,
            finished_at=export.finished_at,
            artifact_url=url,
            hub=hub,
        )


class ExportsPublic(BaseModel):
    data: list[ExportPublic]
    next_cursor: str | None = None

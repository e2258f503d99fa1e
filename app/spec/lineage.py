"""Lineage: what a job ran with (data and format hashes, library versions, device, seed), and cloning a job.

Library versions are read from installed package metadata, so neither the API nor this module imports torch.
"""

import hashlib
import json
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from app.core.errors import Invalid, validation_detail
from app.spec.job import JobSpec

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate", "datasets")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the training stack (None for a library that is not installed)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def format_hash(spec: JobSpec) -> str:
    """sha256 of the spec's format (type, templates, chat template): equal hashes render rows alike."""
    canonical = json.dumps(spec.format.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def job_lineage(spec: JobSpec, dataset_sha256: str | None, device: str, validation_sha256: str | None = None) -> dict:
    """The lineage record stored on the job (jobs.lineage) and written into the model card."""
    return {
        "dataset_sha256": dataset_sha256,
        "validation_dataset_sha256": validation_sha256,
        "format_sha256": format_hash(spec),
        "base_model": spec.base_model,
        "seed": spec.training.seed,
        "device": device,
        "libraries": library_versions(),
    }


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`, recursing into dicts; a None or non-dict override replaces the value whole."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def cloned_spec(spec: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A job's stored spec with overrides deep-merged in; a changed format `type` takes the override whole."""
    fmt = overrides.get("format")
    if isinstance(fmt, dict) and fmt.get("type", spec.get("format", {}).get("type")) != spec.get("format", {}).get(
        "type"
    ):
        spec = {**spec, "format": {}}  # another format's fields would be rejected as unknown
    return deep_merge(spec, overrides)


def clone_spec(spec: dict[str, Any], overrides: dict[str, Any]) -> JobSpec:
    """The spec of a clone (POST /jobs/{id}/clone), checked like a new submission; 422 names the bad field."""
    try:
        return JobSpec.model_validate(cloned_spec(spec, overrides))
    except ValidationError as exc:
        summary, problems = validation_detail(list(exc.errors()))
        raise Invalid(summary, extra={"problems": problems}) from None

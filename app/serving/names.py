"""Model names a caller can ask for: a job's `fine_tuned_model` (`ft:<base>:<tenant>:<suffix>:<job id>`), one of
its checkpoints (`...:ckpt-step-N`), or a base model id. Shared by /v1/fine_tuning (app/openai) and serving."""

import re

from app.models import Job

NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]+")
CHECKPOINT_SUFFIX = re.compile(r":ckpt-step-(\d+)$")


def fine_tuned_model_name(job: Job) -> str:
    """OpenAI's `ft:<base>:<org>:<suffix>:<id>`; here the suffix is the job's name and the id the job's."""
    parts = [job.spec["base_model"], job.tenant, job.name or ""]
    return ":".join(["ft", *(NAME_UNSAFE.sub("-", p) for p in parts), job.id])


def checkpoint_model_name(job: Job, step: int) -> str:
    return f"{fine_tuned_model_name(job)}:ckpt-step-{step}"


def split_fine_tuned(model: str) -> tuple[str, str, int | None] | None:
    """(the name without its checkpoint suffix, the job id it ends in, the checkpoint step) for an `ft:` name;
    None for any other name (a base model id)."""
    if not model.startswith("ft:"):
        return None
    step = None
    if found := CHECKPOINT_SUFFIX.search(model):
        step, model = int(found.group(1)), model[: found.start()]
    return model, model.rsplit(":", 1)[-1], step

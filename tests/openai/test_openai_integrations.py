"""`integrations` under /v1: OpenAI's W&B shape (and our MLflow one) becomes the job spec's field as given, a bad
entry is a 400 whose `param` is `integrations`, and the job object lists them back."""

from typing import Any

import pytest

from app.core.errors import Invalid
from app.models import Job, utcnow
from app.openai.schemas import FineTuningJobCreate
from app.openai.service import job_object
from app.openai.spec import build_spec

CHAT = ["messages"]
WANDB = {"type": "wandb", "wandb": {"project": "support-bot", "name": "run-1", "entity": "team", "tags": ["sft"]}}
MLFLOW = {"type": "mlflow", "mlflow": {"tracking_uri": "https://mlflow.example.com", "experiment": "bots"}}


def request(**fields: Any) -> FineTuningJobCreate:
    return FineTuningJobCreate.model_validate({"model": "tiny-llama", "training_file": "ds_train", **fields})


def job_of(spec: dict[str, Any]) -> Job:
    return Job(id="job_" + "0" * 24, tenant="t", name=None, status="queued", spec=spec, created_at=utcnow())


def test_openai_integrations_become_the_specs_and_are_listed_back() -> None:
    spec = build_spec(request(integrations=[WANDB, MLFLOW]), CHAT, None, {}).model_dump(mode="json")
    assert spec["integrations"][0] == WANDB
    assert spec["integrations"][1] == {"type": "mlflow", "mlflow": {**MLFLOW["mlflow"], "run_name": None}}
    assert job_object(job_of(spec)).integrations == spec["integrations"]
    plain = build_spec(request(), CHAT, None, {}).model_dump(mode="json")
    assert plain["integrations"] == [] and job_object(job_of(plain)).integrations is None


@pytest.mark.parametrize(
    ("integrations", "says"),
    [
        ([{"type": "wandb"}], "integrations.0.wandb"),
        ([{"type": "wandb", "wandb": {"project": "a/b"}}], "integrations.0.wandb.project"),
        ([{"type": "comet", "comet": {}}], "integrations.0"),
        ([{"type": "mlflow", "mlflow": {"tracking_uri": "http://169.254.169.254"}}], "link-local"),
        ([{"type": "mlflow", "mlflow": {"tracking_uri": "https://user:pw@mlflow.example.com"}}], "secrets"),
        ([WANDB, WANDB], "one integration of each type"),
    ],
)
def test_a_bad_integration_is_a_400_naming_integrations(integrations: list[dict], says: str) -> None:
    with pytest.raises(Invalid) as excinfo:
        build_spec(request(integrations=integrations), CHAT, None, {})
    assert excinfo.value.extra["param"] == "integrations" and says in excinfo.value.detail

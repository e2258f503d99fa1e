"""A job's experiment trackers (`integrations`): Weights & Biases in OpenAI's shape, and MLflow.

`[{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}, {"type": "mlflow", "mlflow": {...}}]`: the
worker logs the job's settings, every metric point and the adapter to each (worker/trackers/, docs/trackers.md).
No credential is ever part of the spec: they are the tenant's secrets (PUT /admin/tenants/{t}/secrets/{name}),
so a tracking URI with a user, a password or a query is refused.
"""

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints, field_validator

from app.core.egress import check_url
from app.spec.formats import StrictModel

# W&B refuses these in project and entity names; they would also break the run's URL.
WANDB_NAME = re.compile(r"^[^/\\#?%:\s][^/\\#?%:]{0,127}$")
WandbTag = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class WandbSettings(StrictModel):
    project: str = Field(description="The W&B project the run goes to.", examples=["support-bot"])
    name: str | None = Field(
        None, max_length=128, description="The run's display name; default: the job's name, else id."
    )
    entity: str | None = Field(None, description="The W&B team or user; default: the API key's default entity.")
    tags: list[WandbTag] = Field(default_factory=list, max_length=20, description="Tags on the run.")

    @field_validator("project", "entity")
    @classmethod
    def _wandb_name(cls, value: str | None) -> str | None:
        if value is not None and not WANDB_NAME.fullmatch(value):
            raise ValueError("1 to 128 characters, none of `/ \\ # ? % :`")
        return value

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text (no control characters)")
        return value


class WandbIntegration(StrictModel):
    type: Literal["wandb"] = Field(description="Weights & Biases (OpenAI's `integrations` shape).")
    wandb: WandbSettings


class MlflowSettings(StrictModel):
    tracking_uri: str = Field(
        max_length=2000,
        description="The MLflow tracking server, `http(s)://host[:port][/path]`; public addresses only "
        "(FT_EGRESS_ALLOW for internal ones). Credentials: the tenant's mlflow_tracking_* secrets, never the URL.",
        examples=["https://mlflow.example.com"],
    )
    experiment: str = Field(
        "Default",
        min_length=1,
        max_length=500,
        description="The experiment (by name) the run goes to; made when it does not exist.",
    )
    run_name: str | None = Field(None, max_length=250, description="The run's name; default: the job's name, else id.")

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str) -> str:
        check_url(value)  # http(s), and no literal private host (a host name is checked again on the worker)
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "put no credentials in tracking_uri: an admin sets the tenant's mlflow_tracking_username and "
                "mlflow_tracking_password (or mlflow_tracking_token) secrets"
            )
        if parts.query or parts.fragment:
            raise ValueError("tracking_uri takes no query or fragment: `http(s)://host[:port][/path]`")
        return value.rstrip("/")

    @field_validator("experiment", "run_name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text (no control characters)")
        return value


class MlflowIntegration(StrictModel):
    type: Literal["mlflow"] = Field(description="An MLflow tracking server.")
    mlflow: MlflowSettings


Integration = Annotated[WandbIntegration | MlflowIntegration, Field(discriminator="type")]


def _one_of_each(value: list[WandbIntegration | MlflowIntegration]) -> list[WandbIntegration | MlflowIntegration]:
    types = [i.type for i in value]
    if len(set(types)) != len(types):
        raise ValueError("at most one integration of each type (one wandb, one mlflow)")
    return value


Integrations = Annotated[list[Integration], Field(max_length=2), AfterValidator(_one_of_each)]

# The tenant secrets each tracker sends, by spec type; which of them it needs is app/checks/integrations.py's call.
SECRETS = {
    "wandb": ("wandb_api_key",),
    "mlflow": ("mlflow_tracking_token", "mlflow_tracking_username", "mlflow_tracking_password"),
}

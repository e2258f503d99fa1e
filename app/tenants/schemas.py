"""What the admin API says about a tenant's secrets: whether one is set and since when, the secret itself once."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.core.schemas import UtcDatetime


class SecretStatus(BaseModel):
    """A tenant's secret as admins see it afterwards: never the secret itself."""

    tenant: str
    kind: str = Field(
        description="`webhook_secret`: signs the tenant's webhooks (X-FT-Signature); `hub_token`: the Hugging Face "
        "token the tenant's Hub reads are made with."
    )
    is_set: bool = Field(
        description="False: webhooks are signed with FT_WEBHOOK_SECRET, if set; Hub reads send no token (public "
        "repos only)."
    )
    created_at: UtcDatetime | None = Field(description="When the secret now in use was made (a rotation resets it).")

    @classmethod
    def of(cls, tenant: str, kind: str, created_at: datetime | None) -> "SecretStatus":
        return cls(tenant=tenant, kind=kind, is_set=created_at is not None, created_at=created_at)


class SecretCreated(SecretStatus):
    secret: str = Field(description="The secret itself: shown this once; give it to the tenant's receivers.")


class HubTokenSet(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"token": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"}]})

    token: str = Field(
        min_length=8,
        max_length=400,
        pattern=r"^[A-Za-z0-9_\-.]+$",
        description="A Hugging Face access token (`hf_...`), read scope for the repos the tenant trains on.",
    )


class SecretSet(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"value": "0123456789abcdef0123456789abcdef01234567"}]}
    )

    value: str = Field(
        min_length=1,
        max_length=4096,
        description="The secret itself: stored encrypted, used by the service, never shown again.",
    )


class SecretPublic(BaseModel):
    """One of a tenant's secrets as admins see it: its name and when it was set, never its value."""

    tenant: str
    name: str = Field(
        description="`webhook_secret`, `hub_token`, `wandb_api_key`, `mlflow_tracking_token`, "
        "`mlflow_tracking_username` or `mlflow_tracking_password` (docs/trackers.md, docs/security.md)."
    )
    set_at: UtcDatetime = Field(description="When the value now in use was set (a rotation resets it).")


class SecretsPublic(BaseModel):
    data: list[SecretPublic] = Field(description="The secrets that are set, by name; unset ones are not listed.")

"""`integrations`: each tracker must have what it needs to log in, from the tenant's secrets, before a job is queued.

W&B online needs the tenant's `wandb_api_key` (FT_WANDB_MODE=offline writes runs to disk and needs none); MLflow
servers often take no credentials, so its secrets are optional, but a user without a password is refused here
rather than sent to the server as one. The URL itself was checked by the spec (app/spec/integrations.py).
"""

from sqlalchemy.orm import Session

from app.checks.report import Problem, ValidationReport
from app.core.config import settings
from app.spec.job import JobSpec
from app.tenants import secrets


def check_integrations(session: Session, tenant: str, spec: JobSpec, report: ValidationReport) -> None:
    """A problem (422) for each tracker the tenant's secrets cannot log in to."""
    for index, integration in enumerate(spec.integrations):
        field = f"integrations.{index}.{integration.type}"
        route = f"PUT /admin/tenants/{tenant}/secrets"
        online = integration.type == "wandb" and settings.wandb_mode == "online"
        if online and secrets.get_secret(session, tenant, secrets.WANDB_API_KEY) is None:
            message = (
                f"W&B needs the tenant's wandb_api_key secret, which is not set: an admin sets it with "
                f"{route}/wandb_api_key (or the operator runs W&B offline: FT_WANDB_MODE=offline)"
            )
            report.problems.append(Problem(field=field, message=message))
        if integration.type == "mlflow":
            user = secrets.get_secret(session, tenant, secrets.MLFLOW_TRACKING_USERNAME)
            password = secrets.get_secret(session, tenant, secrets.MLFLOW_TRACKING_PASSWORD)
            if (user is None) != (password is None):
                missing = "mlflow_tracking_password" if password is None else "mlflow_tracking_username"
                message = (
                    f"MLflow basic auth needs both mlflow_tracking_username and mlflow_tracking_password; the "
                    f"tenant's {missing} secret is not set: an admin sets it with {route}/{missing}"
                )
                report.problems.append(Problem(field=field, message=message))

"""Why a tracker failed, in words safe to show the job's owner.

Never the server's response body: the tracking URI is the user's, and an error that quoted what an address
answered would turn the worker into a way to read it. An error code, an HTTP status or an exception's type is
enough to act on; the worker log keeps the full exception for operators.
"""

from app.core.egress import EgressFailed, EgressRefused

HINTS = {
    "UNAUTHENTICATED": "check the tenant's mlflow_tracking_* secrets",
    "CUSTOMER_UNAUTHORIZED": "check the tenant's mlflow_tracking_* secrets",
    "PERMISSION_DENIED": "the tenant's MLflow credentials may not write to this experiment",
    "ENDPOINT_NOT_FOUND": "is tracking_uri an MLflow server?",
}


def describe(exc: BaseException) -> str:
    if isinstance(exc, EgressRefused | EgressFailed):
        return str(exc)  # our own message: the host, and why it is not called
    from worker.trackers.mlflow_run import ArtifactRefused
    from worker.trackers.wandb_run import MissingKey

    if isinstance(exc, ArtifactRefused | MissingKey):
        return str(exc)
    code = getattr(exc, "error_code", None)
    if isinstance(code, str) and code.isupper():  # an MlflowException: the server's answer, as a code
        hint = HINTS.get(code)
        return f"the MLflow server answered {code}" + (f": {hint}" if hint else "")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    return type(exc).__name__

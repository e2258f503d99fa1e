"""A tenant's Hub access from SQL: its own Hub token (`tenant_secrets`) and its dataset size limit.

Apart from app/datasets/access.py, which the worker's training code imports and which must stay free of SQL.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from app.datasets.access import ANONYMOUS, HubAccess, acting_for
from app.tenants.limits import limits_for
from app.tenants.secrets import HUB_TOKEN, get_secret


def access_for(session: Session, tenant: str) -> HubAccess:
    """The tenant's Hub access: its own token, else none (never the service's HF_TOKEN), and its size limit."""
    limits = limits_for(tenant)
    return HubAccess(
        tenant=tenant,
        token=get_secret(session, tenant, HUB_TOKEN),
        max_bytes=limits.max_upload_bytes,
        max_bytes_source=limits.source("max_upload_bytes"),
    )


@contextmanager
def acting_for_job(job_id: str) -> Iterator[HubAccess]:
    """Run the block's Hub reads as the tenant who owns the job: read from SQL, so no message can choose it."""
    from app.core.db import session_scope
    from app.models import Job

    with session_scope() as session:
        job = session.get(Job, job_id)
        access = access_for(session, job.tenant) if job is not None else ANONYMOUS
    with acting_for(access):
        yield access

"""What one tenant's jobs may store and claim on the shared queue: artifact bytes, checkpoints per job, priority.

Beside app/tenants/limits.py (queued jobs, dataset bytes, step and size bounds, rates), and refused the same way:
- artifact storage used up: 429 at submit and at an export request, without `Retry-After` (waiting frees
  nothing; deleting a job's files does);
- a spec that would pack more checkpoints than `max_checkpoints_per_job`, or ask for a priority above
  `max_priority`: a problem naming the field (POST /jobs and /jobs/validate answer 422).

Workers do not check the artifact quota: a job that started under it keeps its checkpoints and delivers its
adapter (losing either would waste the GPU time spent). What a running job can add is bounded by
`max_checkpoints_per_job`, and the next submit is refused until the tenant is under its quota again.
"""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import TooManyRequests
from app.models import Artifact, Job
from app.spec.job import JobSpec
from app.tenants.limits import TenantLimits, limits_for

FREE_SPACE_HINT = (
    "free space with DELETE /jobs/{id} (its files and record) or DELETE /jobs/{id}?keep_metrics=true (its files "
    "only); see each job's files with GET /jobs/{id}/artifacts and the total with GET /usage"
)


def artifact_bytes(session: Session, tenant: str) -> int:
    """Bytes of the tenant's stored adapters, packed checkpoints and exports (what GET /usage counts)."""
    total = select(func.coalesce(func.sum(Artifact.size_bytes), 0)).join(Job, Job.id == Artifact.job_id)
    return int(session.scalar(total.where(Job.tenant == tenant)) or 0)


def check_artifact_quota(session: Session, tenant: str) -> None:
    """429 when the tenant's artifacts already fill its `max_artifact_storage_bytes`: new work would add more."""
    limits = limits_for(tenant)
    used, allowed = artifact_bytes(session, tenant), limits.max_artifact_storage_bytes
    if used >= allowed:
        source = limits.source("max_artifact_storage_bytes")
        raise TooManyRequests(
            f"tenant {tenant!r} holds {used:,} bytes of adapters, checkpoints and exports, its whole quota "
            f"(limit max_artifact_storage_bytes={allowed:,}, set by {source}); {FREE_SPACE_HINT}",
            extra={"limit": "max_artifact_storage_bytes", "allowed": allowed, "usage": used},
        )


def packed_checkpoints(steps: int, every: int) -> int:
    """Archives a job packs: one at each multiple of `every` (the Trainer's save at a last step that is no
    multiple is skipped, worker/training/checkpoints.py: the adapter is saved then anyway)."""
    return steps // every


def smallest_checkpoint_interval(steps: int, max_checkpoints: int) -> int:
    """The smallest `checkpoint_every_steps` that packs at most `max_checkpoints` archives in `steps` steps."""
    return steps // (max_checkpoints + 1) + 1


def checkpoint_problem(spec: JobSpec, limits: TenantLimits, steps: int | None) -> str | None:
    """Why the spec's checkpoint_every_steps would pack too many archives in `steps` steps, or None.

    The steps are training.max_steps, else `steps`: what the epochs run over the data, as the checks counted
    it; None (the data is only read on a worker) leaves the bound to the artifact quota.
    """
    every, allowed = spec.training.checkpoint_every_steps, limits.max_checkpoints_per_job
    steps = spec.training.max_steps or steps
    if every is None or steps is None:
        return None
    packed = packed_checkpoints(steps, every)
    if packed <= allowed:
        return None
    smallest = smallest_checkpoint_interval(steps, allowed)
    return (
        f"{every:,} would pack {packed:,} checkpoints in {steps:,} steps, over this tenant's limit of {allowed:,} "
        f"(max_checkpoints_per_job, {limits.source('max_checkpoints_per_job')}); set it to {smallest:,} or more, "
        "or null to checkpoint only on a graceful stop"
    )


def priority_problem(spec: JobSpec, limits: TenantLimits) -> str | None:
    """Why the spec's priority is above what the tenant may claim on the shared queue, or None."""
    if spec.priority <= limits.max_priority:
        return None
    return (
        f"{spec.priority} is over this tenant's highest priority {limits.max_priority} "
        f"(max_priority, {limits.source('max_priority')}); set priority to {limits.max_priority} or lower"
    )


def bound_problems(spec: JobSpec, limits: TenantLimits, steps: int | None) -> list[tuple[str, str]]:
    """(field, message) for each of this module's spec bounds the spec is over (check_spec_bounds adds them)."""
    found = [
        ("training.checkpoint_every_steps", checkpoint_problem(spec, limits, steps)),
        ("priority", priority_problem(spec, limits)),
    ]
    return [(field, message) for field, message in found if message]

"""Route for POST /jobs/validate: the checks of POST /jobs as a report, with nothing queued."""

from fastapi import APIRouter

from app.api import jobs_service, validate_service
from app.api.estimate_service import EstimatedReport
from app.auth import CallerDep, SessionDep
from app.data_checks import ValidationReport
from app.limits import LIMITED, SubmitRate
from app.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("/validate", response_model=EstimatedReport, dependencies=[SubmitRate], responses=LIMITED)
def validate_job(spec: JobSpec, caller: CallerDep, session: SessionDep) -> ValidationReport:
    """Render the first examples with their trained part, count tokens and steps, list every problem, and
    estimate memory, time and GPU-hours on the fleet's GPUs. 422 for resources no machine of the fleet has."""
    jobs_service.check_fleet_fits(spec)
    return validate_service.check_job_spec(session, caller, spec)

"""Route for POST /jobs/validate: the checks of POST /jobs as a report, with nothing queued."""

from fastapi import APIRouter

from app.api import jobs_service, validate_service
from app.api.estimate_service import EstimatedReport
from app.auth import CallerDep, SessionDep
from app.data_checks import Problem, ValidationReport
from app.errors import Invalid
from app.limits import LIMITED, SubmitRate
from app.prequantized import check_prequantized_base
from app.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("/validate", response_model=EstimatedReport, dependencies=[SubmitRate], responses=LIMITED)
def validate_job(spec: JobSpec, caller: CallerDep, session: SessionDep) -> ValidationReport:
    """Render the first examples with their trained part, count tokens and steps, list every problem, and
    estimate memory, time and GPU-hours on the fleet's GPUs. 422 for resources no machine of the fleet has."""
    jobs_service.check_fleet_fits(spec)
    try:  # what POST /jobs refuses for a GPTQ/AWQ base is a problem of the report here
        check_prequantized_base(spec)
        refused: list[Problem] = []
    except Invalid as exc:
        refused = [Problem(**p) for p in exc.extra.get("problems", [])]
    report = validate_service.check_job_spec(session, caller, spec)
    if refused:
        report.problems[:0] = refused
        report.ok = False
    return report

"""Route for POST /jobs/validate: the checks of POST /jobs as a report, with nothing queued."""

from fastapi import APIRouter

from app.checks import service as validate_service
from app.checks.data import Problem, ValidationReport
from app.checks.estimate import EstimatedReport, config_reader
from app.core.db import SessionDep
from app.core.errors import Invalid
from app.datasets.tenant_access import access_for
from app.fleet.prequantized import check_prequantized_base
from app.spec.job import JobSpec
from app.tenants.auth import CallerDep
from app.tenants.limits import LIMITED, SubmitRate

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("/validate", response_model=EstimatedReport, dependencies=[SubmitRate], responses=LIMITED)
def validate_job(spec: JobSpec, caller: CallerDep, session: SessionDep) -> ValidationReport:
    """Render the first examples with their trained part, count tokens and steps, list every problem, and
    estimate memory, time and GPU-hours on the fleet's GPUs. 422 for resources no machine of the fleet has."""
    validate_service.check_fleet_fits(spec)
    try:  # what POST /jobs refuses for a GPTQ/AWQ base is a problem of the report here
        check_prequantized_base(spec, config_reader(access_for(session, caller.tenant)))
        refused: list[Problem] = []
    except Invalid as exc:
        refused = [Problem(**p) for p in exc.extra.get("problems", [])]
    report = validate_service.check_job_spec(session, caller, spec)
    if refused:
        report.problems[:0] = refused
        report.ok = False
    return report

"""One rank of a multi-process job, started by torchrun from worker/distributed.py.

`python -m worker.ddp_main REQUEST.json`: rank 0 reports through a JobReporter (SQL and Redis) and
writes the outcome file; the other ranks train their shard and report nothing.
"""

import json
import logging
import os
import sys
from pathlib import Path

from worker import frame_stack
from worker.distributed import RankReport, die_with_parent, outcome_of

log = logging.getLogger("worker.ddp")


def main(request_path: str) -> int:
    die_with_parent()  # torchrun's agent killed (the worker was): no rank trains on alone
    request = json.loads(Path(request_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")

    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # load_model places the model on the current device

    from app.datasets.tenant_access import acting_for_job
    from app.spec.job import JobSpec
    from worker.report import JobReporter
    from worker.training import recipe

    spec = JobSpec.model_validate(request["spec"])
    reporter = JobReporter(request["job_id"], request["worker"]) if rank == 0 else None
    report = RankReport(reporter, rank)
    result, error = None, None
    try:
        with acting_for_job(request["job_id"]):  # Hub reads as the job's tenant: allow-lists, its token
            result = frame_stack.call(  # one roomy frame-stack chunk: see worker/frame_stack.py
                recipe.run,
                spec,
                Path(request["dataset_path"]) if request["dataset_path"] else None,
                Path(request["out_dir"]),
                report,
                validation_path=Path(request["validation_path"]) if request["validation_path"] else None,
                resume_from=Path(request["resume_from"]) if request["resume_from"] else None,
            )
    except BaseException as exc:  # every outcome goes back to the task process, which records it
        if rank == 0:
            log.exception("rank 0 stopped: %s", type(exc).__name__)
        error = exc
    finally:
        if reporter is not None:
            reporter.close()  # every point in SQL before the task process records the outcome
    if rank == 0:
        outcome = Path(request["outcome"])
        tmp = outcome.with_suffix(".tmp")
        tmp.write_text(json.dumps(outcome_of(error, result)))
        tmp.replace(outcome)
    return 0 if error is None or type(error).__name__ in ("Cancelled", "Drained") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

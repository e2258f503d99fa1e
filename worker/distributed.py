"""Multi-GPU jobs: `resources.gpus > 1` trains with torchrun (DDP) inside the one Celery task.

The task process keeps what it does for any job (the claim, the lease heartbeat, the outcome); it starts
`python -m torch.distributed.run --nproc-per-node N -m worker.ddp_main` and waits. Every rank runs
the same recipe on its shard of the data; rank 0 reports points and checkpoints and writes the outcome to a
file the task reads back. Cancel and drain are decided on rank 0 and all-reduced, so every rank stops at the
same step (a rank that stopped alone would hang the others in their next all-reduce).

On the CPU the same launcher runs with the gloo backend, so CI exercises the real thing with 2 processes.
"""

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.spec.job import JobSpec
from worker.training.errors import Cancelled, Drained, TrainingError
from worker.training.progress import Report
from worker.training.result import TrainingResult

log = logging.getLogger(__name__)
OUTCOME_FILE = "ddp-outcome.json"
REQUEST_FILE = "ddp-request.json"
PR_SET_PDEATHSIG = 1


def world_size(spec: JobSpec) -> int:
    return spec.resources.gpus


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a killed worker leaves no orphan training."""
    with contextlib.suppress(OSError):  # not Linux/glibc: the lease still stops an orphan at its next heartbeat
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def launch_argv(nproc: int, request: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a private rendezvous on a free local port: jobs on one machine never collide
        f"--nproc-per-node={nproc}",
        "-m",
        "worker.ddp_main",
        str(request),
    ]


def run(
    spec: JobSpec,
    dataset_path: Path | None,
    out_dir: Path,
    job_id: str,
    worker: str,
    validation_path: Path | None = None,
    resume_from: Path | None = None,
) -> TrainingResult:
    """Train across `spec.resources.gpus` processes; returns rank 0's TrainingResult or raises its outcome."""
    nproc = world_size(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome_path = out_dir / OUTCOME_FILE
    outcome_path.unlink(missing_ok=True)
    request = out_dir / REQUEST_FILE
    request.write_text(
        json.dumps(
            {
                "spec": spec.model_dump(mode="json"),
                "dataset_path": str(dataset_path) if dataset_path else None,
                "validation_path": str(validation_path) if validation_path else None,
                "out_dir": str(out_dir),
                "resume_from": str(resume_from) if resume_from else None,
                "job_id": job_id,
                "worker": worker,
                "outcome": str(outcome_path),
            }
        )
    )
    # The ranks look for the drain flag of this task process and of its Celery parent (worker/drain.py).
    env = {**os.environ, "FT_DRAIN_PIDS": f"{os.getpid()},{os.getppid()}", "OMP_NUM_THREADS": _threads(nproc)}
    log.info("job %s: training on %d processes (torchrun, %s)", job_id, nproc, _backend())
    proc = subprocess.Popen(launch_argv(nproc, request), env=env, preexec_fn=die_with_parent)
    try:
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if not outcome_path.exists():
        raise TrainingError(
            "internal_error",
            f"distributed training ({nproc} processes) exited with code {code} before rank 0 reported; "
            "see the worker log",
        )
    outcome = json.loads(outcome_path.read_text())
    return _raise_or_return(outcome, TrainingResult)


def _threads(nproc: int) -> str:
    """Split the CPU threads between the ranks instead of letting each take all of them."""
    if "OMP_NUM_THREADS" in os.environ:
        return os.environ["OMP_NUM_THREADS"]
    return str(max(1, (os.cpu_count() or 1) // nproc))


def _backend() -> str:
    from worker.training import model as modelling

    return "nccl" if modelling.device_type() == "cuda" else "gloo"


def _raise_or_return(outcome: dict[str, Any], result_type: type) -> Any:
    kind = outcome["outcome"]
    if kind == "succeeded":
        return result_type(**outcome["result"])
    if kind == "cancelled":
        raise Cancelled()
    if kind == "drained":
        raise Drained(outcome["step"])
    if kind == "out_of_memory":
        raise MemoryError(f"CUDA out of memory on a rank: {outcome['message']}")
    raise TrainingError(outcome.get("type", "internal_error"), outcome["message"])


def outcome_of(exc: BaseException | None, result: Any = None) -> dict[str, Any]:
    """What rank 0 writes for the task process: the result, or the exception's kind and message."""
    from worker.oom import is_out_of_memory

    if exc is None:
        return {"outcome": "succeeded", "result": asdict(result)}
    if isinstance(exc, Cancelled):
        return {"outcome": "cancelled"}
    if isinstance(exc, Drained):
        return {"outcome": "drained", "step": exc.step}
    if is_out_of_memory(exc):
        return {"outcome": "out_of_memory", "message": str(exc)[:500]}
    if isinstance(exc, TrainingError):
        return {"outcome": "failed", "type": exc.type, "message": exc.message}
    first_line = (str(exc).splitlines() or [""])[0][:500]
    return {
        "outcome": "failed",
        "type": "internal_error",
        "message": f"training failed unexpectedly on rank 0 ({type(exc).__name__}: {first_line}); see the worker log",
    }


class RankReport:
    """The Report every rank uses: rank 0 forwards to the job's reporter, the others stay quiet; stop and drain
    are decided on rank 0 and all-reduced, so all ranks leave the loop at the same step."""

    def __init__(self, inner: Report | None, rank: int):
        self.inner = inner
        self.rank = rank

    def _agreed(self, local: bool) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def parameters(self, trainable: int, total: int) -> None:
        if self.inner is not None:
            self.inner.parameters(trainable, total)

    def train_point(self, point: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.train_point(point)

    def eval_point(self, point: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.eval_point(point)

    def warning(self, message: str) -> None:
        if self.inner is not None:
            self.inner.warning(message)

    def should_stop(self) -> bool:
        return self._agreed(self.inner is not None and self.inner.should_stop())

    def should_drain(self) -> bool:
        return self._agreed(self.inner is not None and self.inner.should_drain())

    def checkpoint(self, step: int, path: Path) -> None:
        if self.inner is not None:
            self.inner.checkpoint(step, path)

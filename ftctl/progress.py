"""Progress on a terminal: a step bar, a sparkline of a curve, and following a job until it ends."""

import sys
import time

import httpx

from app.models import TERMINAL_STATUSES

SPARK = "▁▂▃▄▅▆▇█"


def progress_bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else 0
    return "█" * filled + "·" * (width - filled)


def sparkline(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[int((v - lo) / span * (len(SPARK) - 1))] for v in values)


def follow_job(client: httpx.Client, job_id: str) -> dict:
    """Poll the job twice a second, drawing status, a step bar, loss and ETA on one line, until it ends."""
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        p = job["progress"]
        loss = job["latest"]["loss"]
        eta = f"{p['eta_seconds']:.0f}s" if p["eta_seconds"] is not None else "?"
        total = p["total_steps"] or 0
        sys.stdout.write(
            f"\r  {job['status']:<10} [{progress_bar(p['step'], total)}] step {p['step']}/{total or '?'}"
            f"  loss {loss if loss is None else f'{loss:.4f}'}  eta {eta}   "
        )
        sys.stdout.flush()
        if job["status"] in TERMINAL_STATUSES:
            sys.stdout.write("\n")
            return job
        time.sleep(0.5)

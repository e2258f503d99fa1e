"""What the soak found: lost, doubled and duplicated jobs from the record and the workers' logs; the figures."""

import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

ATTEMPT = re.compile(r"job (job_[0-9a-z]+): attempt \d+")
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[.,]\d+)")


def _intervals(log_dir: Path, workers: list[str]) -> dict[str, list[tuple[str, datetime, datetime]]]:
    """Per job: (worker, first, last) of each attempt, from the workers' log lines: an attempt opens at its
    `job <id>: attempt <n>` line, and every later line of that worker process naming the job extends it."""
    spans: dict[tuple[str, str, int], list[datetime]] = {}
    for worker in workers:
        path = log_dir / f"{worker}.log"
        if not path.exists():
            continue
        run = 0
        for line in path.read_text(errors="replace").splitlines():
            stamp = LOG_TIME.search(line)
            if "celery@" in line and "ready" in line:
                run += 1  # a restarted worker process: its lines are a new run
            if stamp is None:
                continue
            when = datetime.fromisoformat(stamp.group(1).replace(",", "."))
            for job in set(ATTEMPT.findall(line)):
                run += 1  # one attempt, one span (a worker may take the same job again later)
                spans[(job, worker, run)] = [when, when]
            for job in set(re.findall(r"job_[0-9a-z]+", line)):
                if (job, worker, run) in spans:
                    spans[(job, worker, run)][1] = when
    out: dict[str, list[tuple[str, datetime, datetime]]] = defaultdict(list)
    for (job, worker, _), (first, last) in spans.items():
        out[job].append((worker, first, last))
    return out


def check(soak: Any, job_ids: list[str], workers: list[str], steps: int) -> dict:
    """`soak`: bench.soak.Soak (its `get` and its stack's log folder)."""
    lost, duplicated, doubled = [], [], []
    attempts: dict[int, int] = defaultdict(int)
    runs = _intervals(soak.local.log_dir, workers)
    for job_id in job_ids:
        job = soak.get(f"/jobs/{job_id}").json()
        attempts[job["attempts"]] += 1
        if job["status"] != "succeeded":
            lost.append({"id": job_id, "status": job["status"], "error": job.get("error")})
            continue
        curve = [p["step"] for p in soak.get(f"/jobs/{job_id}/metrics").json()["train"]]
        if curve != list(range(1, steps + 1)):
            duplicated.append({"id": job_id, "steps": curve})
        spans = sorted(runs.get(job_id, []), key=lambda s: s[1])
        for (w1, _, end), (w2, start, _) in zip(spans, spans[1:], strict=False):
            if start < end and w1 != w2:
                doubled.append({"id": job_id, "workers": [w1, w2], "overlap_s": (end - start).total_seconds()})
    return {"lost": lost, "doubled": doubled, "duplicated_steps": duplicated, "attempts": dict(attempts)}


def summary(result: dict) -> str:
    by_kind: dict[str, list[float]] = defaultdict(list)
    for fault in result["faults"]:
        cost = fault["requeued_after"] if fault["kind"] == "kill-worker" else fault["answered_after"]
        if cost is not None:
            by_kind[fault["kind"]].append(cost)
    lines = [
        f"{result['jobs']} jobs, {result['workers']} workers, {result['minutes']} min on {result['database']}, "
        f"{len(result['faults'])} faults, {result['seconds']} s in all",
        f"lost {len(result['lost'])}, doubled {len(result['doubled'])}, "
        f"duplicated/missing steps {len(result['duplicated_steps'])}; jobs by attempts {result['attempts']}",
    ]
    for kind, costs in sorted(by_kind.items()):
        costs.sort()
        what = "until its job was requeued" if kind == "kill-worker" else "until it answered again"
        lines.append(f"  {kind}: {len(costs)}x, {what}: median {costs[len(costs) // 2]:.1f} s, max {costs[-1]:.1f} s")
    resumed = sorted(f["resumed_after"] for f in result["faults"] if f.get("resumed_after") is not None)
    if resumed:
        median = resumed[len(resumed) // 2]
        lines.append(f"  killed jobs running again after: median {median:.1f} s (their wait in the queue included)")
    return "\n".join(lines)

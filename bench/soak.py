"""The soak: many short jobs through two workers while a loop kills a worker or restarts the API or Redis.

    python -m bench.soak --minutes 15 --jobs 200          # the full soak (docs/operations.md)
    python -m bench.soak --minutes 5 --jobs 60            # the CI version (.ci/run: `make soak`)
    python -m bench.soak --postgres postgresql://postgres@127.0.0.1:5432/test   # on PostgreSQL

It starts a private stack (its own redis-server, SQLite or a PostgreSQL database of its own, the API and two
workers, exactly as `ftctl demo` starts them), submits the jobs spread over the run, and every 30-90 s (seeded,
`--seed`) does one fault: SIGKILL a worker (restarted 2 s later, as a supervisor would), SIGKILL and restart the
API, or stop and restart Redis (no persistence: whatever it held is gone). Then it waits for every job to end and
checks, from the record and the workers' logs:

- lost: a job that did not end `succeeded`;
- doubled: a job that two workers ran at the same time (two attempts whose log lines overlap in time);
- duplicated or missing steps: a job whose train curve is not each step 1..max_steps exactly once;
- and what each fault cost: the seconds until the service answered again and the killed job ran again.

Exit status 1 when anything was lost, doubled or duplicated. Figures as JSON with `--out`.
"""

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.soak_report import check, summary
from ftctl.localstack import LocalStack, free_port

STEPS = 6
ENV = {
    "FT_LEASE_SECONDS": "6",  # a dead worker's job is noticed within seconds
    "FT_HEARTBEAT_SECONDS": "1",
    "FT_RECONCILE_EVERY_SECONDS": "2",
    "FT_MAX_ATTEMPTS": "10",  # faults every 30-90 s may hit one job more than once; it must still end
    "FT_VISIBILITY_TIMEOUT_S": "30",
    "FT_MAX_QUEUED_JOBS": "10000",
    "FT_SUBMIT_RATE_PER_MINUTE": "10000",
    "FT_UPLOAD_RATE_PER_MINUTE": "10000",
}
ROWS = [
    {"quote": "Be yourself; everyone else is already taken.", "tags": "inspirational, honesty"},
    {"quote": "So many books, so little time.", "tags": "books, humor"},
    {"quote": "A room without books is like a body without a soul.", "tags": "books, soul"},
    {"quote": "You only live once, but if you do it right, once is enough.", "tags": "life, humor"},
]


@dataclass
class Fault:
    kind: str  # "kill-worker", "restart-api", "restart-redis"
    at: float  # seconds since the start
    target: str = ""
    job: str | None = None  # the job the killed worker was running
    answered_after: float | None = None  # seconds until the API (or Redis) answered again
    requeued_after: float | None = None  # seconds until the killed worker's job was back in the queue
    resumed_after: float | None = None  # seconds until that job was claimed again (includes its wait in the queue)


@dataclass
class Soak:
    local: LocalStack
    client: httpx.Client
    started: float = field(default_factory=time.monotonic)
    faults: list[Fault] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def get(self, path: str, **params: object) -> httpx.Response:
        """A GET that waits out the API's own restarts (up to a minute)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return self.client.get(path, params=params)
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def post(self, path: str, body: dict) -> httpx.Response:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = self.client.post(path, json=body)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code < 500:
                return response
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST {path} kept failing: {response.text if response else 'no answer'}")
            time.sleep(0.5)


def _spec(dataset: str, seed: int) -> dict:
    return {
        "name": f"soak-{seed}",
        "base_model": "tiny-llama",
        "dataset": dataset,
        "format": {"type": "template", "template": "{quote} ->: {tags}"},
        "training": {
            "max_steps": STEPS,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "eval_fraction": 0.0,
            "checkpoint_every_steps": 2,
            "optimizer": "adamw_torch",
            "seed": seed,
        },
    }


def _redis_port(local: LocalStack) -> int:
    return int(local.env["FT_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])


def _running_job(soak: Soak, worker: str) -> str | None:
    """The job this worker process is running: a job's `worker` is `host:pid` of a pool child in its group."""
    group = soak.local.processes[worker].pid
    for job in soak.get("/jobs", status="running", limit=100).json()["data"]:
        pid = (job.get("worker") or "").rpartition(":")[2]
        try:
            if pid.isdigit() and os.getpgid(int(pid)) == group:
                return job["id"]
        except ProcessLookupError:
            continue
    return None


def _attempts_of(soak: Soak, job_id: str) -> int:
    return soak.get(f"/jobs/{job_id}").json()["attempts"]


def do_fault(soak: Soak, rng: random.Random, workers: list[str]) -> Fault:
    kind = rng.choice(["kill-worker", "kill-worker", "restart-api", "restart-redis"])
    fault = Fault(kind, soak.now())
    local = soak.local
    if kind == "kill-worker":
        fault.target = rng.choice(workers)
        fault.job = _running_job(soak, fault.target)
        attempts = _attempts_of(soak, fault.job) if fault.job else 0
        local.kill(fault.target)
        local.stop_process(fault.target)
        time.sleep(2)
        local.start_worker(fault.target)
        if fault.job:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job = soak.get(f"/jobs/{fault.job}").json()
                if fault.requeued_after is None and (job["status"] != "running" or job["attempts"] > attempts):
                    fault.requeued_after = round(soak.now() - fault.at, 2)
                if job["attempts"] > attempts or job["status"] not in ("queued", "running"):
                    fault.resumed_after = round(soak.now() - fault.at, 2)
                    break
                time.sleep(0.2)
    elif kind == "restart-api":
        local.kill("api")
        local.stop_process("api")
        local.start_api()
        fault.answered_after = round(soak.now() - fault.at, 2)
    else:
        port = _redis_port(local)
        local.stop_process("redis")
        time.sleep(1)
        local.start_redis(port)
        fault.answered_after = round(soak.now() - fault.at, 2)
    return fault


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="ft-soak-"))
    env = {**os.environ, **ENV, "FT_DATA_DIR": str(root / "data"), "FT_LOG_FORMAT": "console"}
    env["FT_MODELS_DIR"] = str(Path(args.models_dir).resolve())
    env.pop("FT_DATABASE_URL", None)
    database = _create_database(args.postgres) if args.postgres else None
    if database:
        env["FT_DATABASE_URL"] = database[1]
    _ensure_tiny(Path(env["FT_MODELS_DIR"]))
    local = LocalStack(env=env, log_dir=root / "logs", worker_args=["--concurrency", "1"])
    local.log_dir.mkdir(parents=True)
    local.start_redis(free_port())
    local.start(worker=False)
    workers = [f"worker-{i}" for i in range(1, args.workers + 1)]
    for name in workers:
        local.start_worker(name)
    key = _make_key(local)
    client = httpx.Client(base_url=local.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    soak = Soak(local, client)
    rng = random.Random(args.seed)
    try:
        rows = "\n".join(json.dumps(r) for r in ROWS * 8).encode()
        dataset = client.post("/datasets", files={"file": ("quotes.jsonl", rows)}, data={"name": "soak"}).json()
        job_ids: list[str] = []
        duration = args.minutes * 60
        every = duration * 0.8 / args.jobs  # submissions end at 80% of the run: faults still hit the last ones
        next_fault = rng.uniform(args.fault_min, args.fault_max)
        while soak.now() < duration:
            while len(job_ids) < args.jobs and soak.now() >= len(job_ids) * every:
                response = soak.post("/jobs", _spec(dataset["id"], len(job_ids)))
                if response.status_code != 201:
                    raise RuntimeError(f"POST /jobs: {response.status_code} {response.text}")
                job_ids.append(response.json()["id"])
            if soak.now() >= next_fault:
                fault = do_fault(soak, rng, workers)
                soak.faults.append(fault)
                _progress(soak, job_ids, args, f"fault {fault.kind} {fault.target}".strip())
                next_fault = soak.now() + rng.uniform(args.fault_min, args.fault_max)
            time.sleep(0.5)
        _progress(soak, job_ids, args, "faults over; waiting for the rest")
        deadline = time.monotonic() + args.drain_seconds
        while time.monotonic() < deadline and _unfinished(soak):
            time.sleep(1)
        result = check(soak, job_ids, workers, STEPS)
        result.update(
            jobs=len(job_ids),
            minutes=args.minutes,
            workers=args.workers,
            seconds=round(soak.now(), 1),
            database="postgresql" if database else "sqlite",
            faults=[vars(f) for f in soak.faults],
            logs=str(local.log_dir),
        )
        return result
    finally:
        client.close()
        local.stop()
        if database:
            _drop_database(args.postgres, database[0])


def _create_database(admin_url: str) -> tuple[str, str]:
    """A PostgreSQL database of the soak's own on the server `admin_url` names -> (its name, its URL)."""
    import psycopg

    name = f"ft_soak_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def _drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _unfinished(soak: Soak) -> int:
    return sum(len(soak.get("/jobs", status=s, limit=1).json()["data"]) for s in ("queued", "running"))


def _progress(soak: Soak, job_ids: list[str], args: argparse.Namespace, what: str) -> None:
    done = len(soak.get("/jobs", status="succeeded", limit=500).json()["data"])
    elapsed = soak.now()
    print(
        f"[{elapsed:6.0f}/{args.minutes * 60:.0f} s] {what}: {len(job_ids)}/{args.jobs} submitted, {done} succeeded",
        flush=True,
    )


def _make_key(local: LocalStack) -> str:
    argv = [sys.executable, "-m", "ftctl.main", "keys", "create", "soak"]
    out = subprocess.run(argv, env=local.env, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def _ensure_tiny(models_dir: Path) -> None:
    if not (models_dir / "tiny-llama" / "config.json").exists():
        from worker.training.tiny import make_tiny_model

        make_tiny_model(models_dir / "tiny-llama")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fault-min", type=float, default=30)
    parser.add_argument("--fault-max", type=float, default=90)
    parser.add_argument("--drain-seconds", type=float, default=600, help="how long to wait for jobs after the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--postgres",
        default=None,
        metavar="ADMIN_URL",
        help="run on a PostgreSQL database of its own made on this server, e.g. postgresql://postgres@127.0.0.1/test "
        "(default: SQLite)",
    )
    parser.add_argument("--models-dir", default="var/models", help="where the tiny model is (made if missing)")
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    print(summary(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    bad = result["lost"] or result["doubled"] or result["duplicated_steps"]
    for kind in ("lost", "doubled", "duplicated_steps"):
        for item in result[kind][:5]:
            print(f"{kind}: {item}", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

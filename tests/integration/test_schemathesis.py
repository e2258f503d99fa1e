"""Property-based fuzzing of the live API from its own OpenAPI schema (schemathesis), as one tenant beside another.

It must find no 5xx, no response outside the schema (status, content type, headers, body), no operation that
skips auth, and nothing of the other tenant's (tests/integration/schemathesis_hooks.py). It runs against an
extra API replica whose queue no worker reads, with a small queue quota and step bound for the fuzzing
tenant, so whatever it submits is never trained and is cancelled at the end. Bounded: FT_FUZZ_MAX_EXAMPLES
cases per operation and FT_FUZZ_MAX_SECONDS (60) for the tenant run, 15 s for the admin run.
"""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.models import Job, utcnow
from tests.integration.conftest import ONE_DATABASE, Stack
from tests.integration.replicas import cancel_queued, ftctl, replicas, stack_database_url

pytestmark = ONE_DATABASE

MAX_EXAMPLES = os.environ.get("FT_FUZZ_MAX_EXAMPLES", "12")
MAX_SECONDS = int(os.environ.get("FT_FUZZ_MAX_SECONDS", "60"))
# Server-Sent Events stay open while a job runs: the stream is covered by test_events.py and test_security.py.
EXCLUDED_PATHS = ["/jobs/{job_id}/events"]
# 413 is a right answer to a body over FT_MAX_REQUEST_BODY_BYTES, even one the schema forbids for another reason.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
"""
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
    "no_cross_tenant",
]


def queued_job(stack: Stack, tenant: str, spec: dict) -> str:
    """A queued job recorded as sent, on no queue: it exists for the fuzzer to find, and never runs."""
    engine = make_engine(stack_database_url(stack))
    with Session(engine) as session:
        job = Job(tenant=tenant, status="queued", spec=spec, enqueued_at=utcnow())
        session.add(job)
        session.commit()
        job_id = job.id
    engine.dispose()
    return job_id


def things_of(stack: Stack, tenant: str) -> dict[str, list[str]]:
    with stack.client_for(stack.make_key(tenant, tenant=tenant)) as client:
        rows = "".join(json.dumps({"text": f"{tenant} row {i}"}) + "\n" for i in range(8)).encode()
        dataset = client.post("/datasets", files={"file": ("rows.jsonl", rows)}).json()["id"]
    spec = {"base_model": "tiny-llama", "dataset": dataset, "training": {"max_steps": 1}}
    return {"job": [queued_job(stack, tenant, spec)], "dataset": [dataset]}


def run_schemathesis(
    base_url: str, key: str, config: Path, ids: dict, seconds: int, *selection: str
) -> subprocess.CompletedProcess:
    """One schemathesis run against `base_url` with `key`; `selection`: which operations (CLI filters)."""
    argv = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config)),
        *("run", f"{base_url}/openapi.json", "--header", f"Authorization: Bearer {key}"),
        *("--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing"),
        *("--max-examples", MAX_EXAMPLES, "--max-time", str(seconds)),
        *("--request-timeout", "30", "--workers", "1", "--no-color"),
        *selection,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks", "FT_FUZZ_IDS": json.dumps(ids)}
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 240)
    assert run.returncode == 0, f"schemathesis found problems:\n{run.stdout[-12000:]}\n{run.stderr[-3000:]}"
    return run


def test_fuzzing_finds_nothing(stack: Stack, tmp_path: Path) -> None:
    fuzz, victim = (f"{name}-{stack.name}-{secrets.token_hex(3)}" for name in ("fuzz", "victim"))
    ids = {"own": things_of(stack, fuzz), "victim": {**things_of(stack, victim), "tenant": victim}}
    key = stack.make_key("fuzzer", tenant=fuzz)
    admin = ftctl(stack, "keys", "create", "fuzz-admin", "--tenant", f"ops-{fuzz}", "--admin").stdout.split()[-1]
    limits = {fuzz: {"max_queued_jobs": 2, "max_training_steps": 2}}
    limits[fuzz] |= {"submit_rate_per_minute": 100_000, "upload_rate_per_minute": 100_000}
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    try:
        with replicas(stack, 1, limits) as (replica,):
            excluded = [arg for path in EXCLUDED_PATHS for arg in ("--exclude-path", path)]
            tenant_run = run_schemathesis(replica.base_url, key, config, ids, MAX_SECONDS, *excluded)
            # The admin operations, as an admin (as a tenant they only ever answer 403). Not revoke: the fuzzer
            # reuses ids it has seen in responses, and would revoke the keys of everything else on this stack.
            admin_only = ("--include-path-regex", "^/admin/", "--exclude-path", "/admin/keys/{key_id}/revoke")
            run_schemathesis(replica.base_url, admin, config, {}, 15, *admin_only)
        print(tenant_run.stdout[-2500:])
        # The other tenant's things are as they were: none was cancelled, changed or removed.
        with stack.client_for(stack.make_key("victim-check", tenant=victim)) as owner:
            assert owner.get(f"/jobs/{ids['victim']['job'][0]}").json()["status"] == "queued"
            assert owner.get(f"/datasets/{ids['victim']['dataset'][0]}").status_code == 200
    finally:
        cancel_queued(stack, [fuzz, victim])

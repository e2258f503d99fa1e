"""`ftctl jobs ...`: submit, list, get, cancel, follow and download jobs through the HTTP API (finetune_client)."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from finetune_client import Client, SseEvent, iter_sse
from finetune_client.files import load_spec

from ftctl.api import DEFAULT_URL, EXIT_CODES, EXIT_JOB_FAILED, ApiKey, ApiUrl, JsonOutput, connect, fail, print_json
from ftctl.logs import ProgressLine, download_progress, job_progress, on_terminal, show_logs

__all__ = ["SseEvent", "iter_sse", "jobs"]  # SseEvent and iter_sse: where tests and scripts have imported them

jobs = typer.Typer(
    help="Jobs, through the HTTP API (FT_API_URL and FT_API_KEY, or --api-url / --api-key).",
    epilog=EXIT_CODES,
    no_args_is_help=True,
)
SpecFile = Annotated[Path, typer.Argument(help="The job spec: a .json, .yaml or .yml file.", show_default=False)]


def _spec(path: Path) -> dict[str, Any]:
    try:
        return load_spec(path)
    except (OSError, ValueError, ImportError) as exc:  # json's and yaml's errors are ValueErrors or report as such
        raise fail(f"cannot read the spec {path}: {exc}") from None
    except Exception as exc:  # yaml.YAMLError, without importing yaml here
        raise fail(f"cannot parse the spec {path}: {exc}") from None


def _line(job: dict[str, Any]) -> str:
    progress, loss = job["progress"], job["latest"]["loss"]
    steps = f"{progress['step']}/{progress['total_steps'] or '?'}"
    if job.get("queue_position"):
        steps = f"#{job['queue_position']} in line"
    loss_text = f"{loss:.4f}" if loss is not None else "-"
    return f"{job['id']}  {job['status']:<10} {steps:>11}  loss {loss_text:<8} {job['name'] or ''}"


def _wait(client: Client, job_id: str, as_json: bool) -> dict[str, Any]:
    view = ProgressLine(job_id)
    with job_progress(view, bar=on_terminal() and not as_json) as on_progress:
        job = client.jobs.wait(job_id, on_progress=on_progress)
    if not as_json:
        error = job.get("error") or {}
        typer.echo(f"job {job_id} {job['status']} at {view.summary()}" + (f": {error['message']}" if error else ""))
    return job


@jobs.command("submit")
def jobs_submit(
    spec_file: SpecFile,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it until it ends (exit 1 unless it succeeds).")] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Resubmitting with the same key returns the first job, never a second.")
    ] = None,
    as_json: JsonOutput = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Submit the job in SPEC_FILE; prints its id (or, with --json, the job)."""
    spec = _spec(spec_file)
    with connect(api_url, api_key) as client:
        job = client.jobs.create(spec, idempotency_key=idempotency_key)
        if not as_json:
            typer.echo(f"submitted job {job['id']} ({job['status']})", err=wait)
        if wait:
            job = _wait(client, job["id"], as_json)
    if as_json:
        print_json(job)
    elif not wait:
        typer.echo(job["id"])
    if wait and job["status"] != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)


@jobs.command("validate")
def jobs_validate(
    spec_file: SpecFile, as_json: JsonOutput = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = ""
) -> None:
    """What the API makes of SPEC_FILE without submitting it: token counts, warnings, the estimate (JSON)."""
    with connect(api_url, api_key) as client:
        print_json(client.jobs.validate(_spec(spec_file)))


@jobs.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first (0: all).")] = 20,
    as_json: JsonOutput = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Your jobs, newest first: id, status, step/total (a queued job: its place in line), latest loss, name."""
    with connect(api_url, api_key) as client:
        found = []
        for job in client.jobs.list(status=status, page_size=min(limit or 100, 500)):
            found.append(job)
            if not as_json:
                typer.echo(_line(job))
            if len(found) == limit:
                break
    if as_json:
        print_json(found)


@jobs.command("get")
def jobs_get(job_id: str, as_json: JsonOutput = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = "") -> None:
    """One job: a summary line and its error, or with --json the whole record."""
    with connect(api_url, api_key) as client:
        job = client.jobs.get(job_id)
    if as_json:
        print_json(job)
        return
    typer.echo(_line(job))
    if job.get("error"):
        typer.echo(f"  {job['error']['type']}: {job['error']['message']}")


@jobs.command("show", hidden=True)
def jobs_show(job_id: str, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = "") -> None:
    """One job, as JSON (what `jobs get --json` prints; kept for scripts that used it)."""
    with connect(api_url, api_key) as client:
        print_json(client.jobs.get(job_id))


@jobs.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOutput = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = "") -> None:
    """Cancel a queued or running job."""
    with connect(api_url, api_key) as client:
        job = client.jobs.cancel(job_id)
    if as_json:
        print_json(job)
    else:
        typer.echo(f"job {job_id}: {job['status']}")


@jobs.command("wait")
def jobs_wait(job_id: str, as_json: JsonOutput = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = "") -> None:
    """Wait for a job to end (exit 1 unless it succeeds)."""
    with connect(api_url, api_key) as client:
        job = _wait(client, job_id, as_json)
    if as_json:
        print_json(job)
    if job["status"] != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)


@jobs.command("logs")
def jobs_logs(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep watching until the job ends.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event: event, id, data.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """The job's events; with --follow, a live progress bar (step/total, loss, ETA) until it ends, reconnecting
    where it left off after a dropped connection."""
    view = ProgressLine(job_id)
    with connect(api_url, api_key) as client:
        events = client.jobs.events(job_id, follow=follow)
        if as_json:
            for event in events:
                view.describe(event)
                typer.echo(json.dumps({"event": event.event, "id": event.id, "data": event.json()}))
        else:
            show_logs(events, view, bar=follow and on_terminal())
    if follow:
        if not as_json:
            typer.echo(f"job {job_id} {view.outcome or 'stream ended'} at {view.summary()}")
        raise typer.Exit(0 if view.outcome == "succeeded" else EXIT_JOB_FAILED)


@jobs.command("download")
def jobs_download(
    job_id: str,
    name: Annotated[str, typer.Argument(help="`adapter`, or a name from `GET /jobs/ID/artifacts`.")] = "adapter",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="A file or directory (default: JOB-NAME.tar.gz here).")
    ] = None,
    as_json: JsonOutput = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Download an artifact (.tar.gz), checked against the sha256 the API announces; prints where it went."""
    with connect(api_url, api_key) as client, download_progress(name, bar=on_terminal() and not as_json) as bar:
        path = client.jobs.download(job_id, name, output, on_progress=bar)
    if as_json:
        print_json({"job_id": job_id, "name": name, "path": str(path), "size_bytes": path.stat().st_size})
    else:
        typer.echo(str(path))
